"""The machinery the tests, the fault drills, the benchmarks and ``scripts/run_local.py``
share, written once (not shipped in the image):

- ``processes``: free ports, a clean environment, this project's programs as their own
  processes (``spawn`` / ``terminate`` / ``background``, ``WorkerProcess``,
  ``ServiceProcess``), and waiting on a probe (``eventually``, ``eventually_blocking``);
- ``temporal``: the one launcher of ``temporal server start-dev`` (``DevServer``: ports,
  SQLite file or in memory, extra arguments, headless or with the Web UI, log file; it
  retries a start-up that dies, on fresh ports) and a client of it (``connect``);
- ``sinks``: loopback receivers that record what arrives: the HTTP sink (chat, pager,
  webhook channels) and the SMTP sink (email);
- ``postgres``: a scratch PostgreSQL database, and a TCP proxy a drill can cut;
- ``serve``: an ASGI app on uvicorn on a free loopback port, in this process;
- ``policy``: policy files: the shipped policy, changed by edits (``write_policy``).
"""
