"""The report's charts as inline SVG (matplotlib, Agg/SVG canvases, no pyplot state).

Output is deterministic for a given report: a fixed ``svg.hashsalt`` per chart (so ids
never collide when both charts sit in one HTML page), no date in the metadata, and text
kept as text (``svg.fonttype: none``), which also keeps the page small and searchable.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from contract.labels import TIER_LABELS
from contract.models import Tier
from ledger.report import TARGET_METRICS, TIER_ORDER, Report

TIER_COLOURS = {
    Tier.MISSION_CRITICAL: "#b2182b",
    Tier.PREMIUM: "#2166ac",
    Tier.STANDARD: "#1b7837",
    Tier.COMMUNITY: "#767676",
}
MAX_TICK_LABELS = 12


STYLE: dict[Any, Any] = {
    "font.size": 9,
    "svg.fonttype": "none",
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _svg(figure: Figure, salt: str) -> str:
    out = io.StringIO()
    with rc_context({"svg.hashsalt": salt}):
        figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    # Inline in HTML: drop the XML declaration and DOCTYPE, keep the <svg> element, and
    # prefix its ids (matplotlib numbers them per figure: figure_1, axes_1, ...) so the two
    # charts of one page never share an id.
    text = text[text.index("<svg") :].strip()
    text = re.sub(r'\bid="([^"]+)"', rf'id="{salt}-\1"', text)
    return re.sub(r"(href=\"#|url\(#)", rf"\1{salt}-", text)


def _figure() -> Figure:
    return Figure(figsize=(8, 3.4), layout="constrained")


def _empty(figure: Figure, message: str) -> None:
    _blank(figure.add_subplot(), message)


def attainment_chart(report: Report) -> str:
    """Attainment per tier per bucket of opened_at (day or ISO week), as SVG."""
    with rc_context(STYLE):
        return _svg(attainment_figure(report), "sla-report-attainment")


def acknowledge_chart(report: Report) -> str:
    """The time to acknowledge per tier (box plot, every ticket a dot), as SVG."""
    with rc_context(STYLE):
        return _svg(acknowledge_figure(report), "sla-report-acknowledge")


def attainment_figure(report: Report) -> Figure:
    figure = _figure()
    series = report.series
    if not series.tiers:
        _empty(figure, "no ticket met or breached its response target in this range")
        return figure
    axes = figure.add_subplot()
    positions = list(range(len(series.buckets)))
    for tier, points in series.tiers.items():
        values = [p.attainment if p.attainment is not None else math.nan for p in points]
        axes.plot(
            positions,
            values,
            marker="o",
            markersize=4,
            linewidth=1.5,
            color=TIER_COLOURS[tier],
            label=TIER_LABELS[tier],
        )
    every = max(1, math.ceil(len(positions) / MAX_TICK_LABELS))
    axes.set_xticks(positions[::every], [label for _, label in series.buckets][::every])
    axes.tick_params(axis="x", labelrotation=30)
    axes.set_xlim(-0.5, len(positions) - 0.5)
    axes.set_ylim(-5, 105)
    axes.yaxis.set_major_formatter(PercentFormatter(100))
    axes.set_ylabel("response target met")
    axes.set_xlabel("opened (UTC " + ("day" if series.unit == "day" else "ISO week") + ")")
    axes.grid(axis="y", color="#dddddd")
    figure.legend(loc="outside right upper", frameon=False)
    return figure


def acknowledge_figure(report: Report) -> Figure:
    figure = _figure()
    if not report.ack_times:
        _empty(figure, "no acknowledged ticket in this range")
        return figure
    axes = figure.add_subplot()
    tiers = list(report.ack_times)
    positions = list(range(1, len(tiers) + 1))
    longest = max(max(times) for times in report.ack_times.values())
    unit, size = _unit(longest)
    values_per_tier = [[t.total_seconds() / size for t in report.ack_times[t]] for t in tiers]
    boxes: dict[str, Any] = axes.boxplot(
        values_per_tier,
        positions=positions,
        showfliers=False,
        widths=0.5,
        medianprops={"color": "#000"},
    )
    for box, tier in zip(boxes["boxes"], tiers, strict=True):
        box.set_color(TIER_COLOURS[tier])
    for position, tier, values in zip(positions, tiers, values_per_tier, strict=True):
        axes.scatter([position] * len(values), values, s=12, color=TIER_COLOURS[tier], zorder=3)
    axes.set_xticks(positions, [TIER_LABELS[t] for t in tiers])
    axes.set_ylim(bottom=0)
    axes.set_ylabel(f"time to acknowledge ({unit}, wall clock)")
    axes.grid(axis="y", color="#dddddd")
    return figure


def targets_chart(report: Report) -> str:
    """Next reply and resolution: attainment per tier (bars), the business time to meet
    each (box plots), and the time waited on the customer per tier (bars), as SVG."""
    with rc_context(STYLE):
        return _svg(targets_figure(report), "sla-report-targets")


def targets_figure(report: Report) -> Figure:
    figure = _figure()
    waits = [w for w in report.waits if w.tier is not None]
    if not report.has_targets and not waits:
        _empty(figure, "no ticket has a next-reply or resolution target in this range")
        return figure
    bars, boxes, waited = figure.subplots(1, 3, width_ratios=(2, 3, 2))
    metrics = [m for m in TARGET_METRICS if any(t.metric is m and t.clocks for t in report.targets)]
    tiers = [tier for tier in TIER_ORDER if any(t.tier is tier for t in report.targets)]
    width = 0.8 / max(len(tiers), 1)
    for i, tier in enumerate(tiers):
        values = [
            next(
                (
                    t.attainment
                    for t in report.targets
                    if (t.tier, t.metric) == (tier, m) and t.attainment is not None
                ),
                math.nan,
            )
            for m in metrics
        ]
        positions = [j + (i - (len(tiers) - 1) / 2) * width for j in range(len(metrics))]
        drawn_bars = bars.bar(
            positions, values, width, color=TIER_COLOURS[tier], label=TIER_LABELS[tier]
        )
        # The share on each bar, so a 0 % bar reads apart from a target without data.
        labels = ["" if math.isnan(v) else f"{v:.0f}%" for v in values]
        bars.bar_label(drawn_bars, labels, fontsize=7)
    bars.set_ylim(0, 105)
    bars.yaxis.set_major_formatter(PercentFormatter(100))
    _label(bars, range(len(metrics)), [m.value.replace("_", "\n") for m in metrics], "target met")
    series = [
        (f"{m.value.replace('_', ' ')}\n{TIER_LABELS[tier]}", times, tier)
        for m in metrics
        for tier, times in report.target_times_business.get(m, {}).items()
        if times
    ]
    if series:
        longest = max(max(times) for _, times, _ in series)
        unit, size = _unit(longest)
        per_box = [[t.total_seconds() / size for t in times] for _, times, _ in series]
        drawn: dict[str, Any] = boxes.boxplot(
            per_box, showfliers=False, widths=0.5, medianprops={"color": "#000"}
        )
        for box, (_, _, tier) in zip(drawn["boxes"], series, strict=True):
            box.set_color(TIER_COLOURS[tier])
        boxes.set_ylim(bottom=0)
        _label(
            boxes,
            range(1, len(series) + 1),
            [label for label, _, _ in series],
            f"time to meet ({unit}, business)",
        )
    else:
        _blank(boxes, "none met yet")
    if waits:
        unit, size = _unit(max(max(w.business_total, w.total) for w in waits))
        positions = list(range(len(waits)))
        colours = [TIER_COLOURS[w.tier] for w in waits if w.tier is not None]
        business = [w.business_total.total_seconds() / size for w in waits]
        wall = [w.total.total_seconds() / size for w in waits]
        waited.bar([x - 0.2 for x in positions], business, 0.4, color=colours)
        waited.bar([x + 0.2 for x in positions], wall, 0.4, color=colours, alpha=0.35)
        _label(
            waited,
            positions,
            [TIER_LABELS[w.tier] for w in waits if w.tier],
            f"waited on the customer ({unit})\nbusiness (solid) | wall (light)",
        )
    else:
        _blank(waited, "no wait")
    if tiers:
        figure.legend(loc="outside right upper", frameon=False)
    return figure


def _label(axes: Axes, positions: Iterable[float], labels: list[str], ylabel: str) -> None:
    """A panel's small x labels, its y label and grid."""
    axes.set_xticks(list(positions), labels)
    axes.tick_params(axis="x", labelsize=7)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", color="#dddddd")


def _blank(axes: Axes, message: str) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, message, ha="center", va="center", color="#555555")


def _unit(longest: timedelta) -> tuple[str, int]:
    """Hours beyond three hours, else minutes: the axis unit and its size in seconds."""
    return ("hours", 3600) if longest.total_seconds() > 3 * 3600 else ("minutes", 60)
