// The agent board: a live countdown to each ticket's nearest deadline (overdue rows
// turn red), and a reload of the same page every 30 s to pick up new tickets.
function pad(n) { return String(n).padStart(2, "0"); }
function tick() {
  const now = Date.now();
  for (const cell of document.querySelectorAll("td.countdown[data-due]")) {
    const left = Math.round((Date.parse(cell.dataset.due) - now) / 1000);
    const abs = Math.abs(left);
    const text = `${Math.floor(abs / 3600)}:${pad(Math.floor(abs % 3600 / 60))}:${pad(abs % 60)}`;
    cell.textContent = left >= 0 ? text : `breached ${text} ago`;
    if (left < 0) cell.closest("tr").classList.add("breached");
  }
}
tick();
setInterval(tick, 1000);
const table = document.getElementById("tickets");
// Not while an agent is typing a reply's summary or what the customer owes: try again later.
function refresh() {
  const typing = [...table.querySelectorAll("input.summary, input.reason")].some(
    (input) => input.value !== "" || input === document.activeElement);
  if (typing) setTimeout(refresh, 30000);
  else location.replace(table.dataset.refresh || "/board");
}
setTimeout(refresh, 30000);
