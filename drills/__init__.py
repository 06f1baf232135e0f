"""Fault drills against the real stack: the Temporal dev server, ``worker.py`` as its own
process, loopback sinks, the SLA ledger on SQLite or PostgreSQL.

Each drill is a module with ``main(argv)``, run as ``python -m drills.<name>`` (``--help``,
``--tickets N``, ``--short`` for the test suite's size, ``--keep`` to keep its temporary
directory) and prints one verdict line; it exits 1 on FAIL. A full-size run also writes
the verdict, with the run's date, machine, command, profile and problems, to
``drills/results/latest-<drill>.md`` (``--out DIR`` elsewhere; a ``--short`` run writes
no file unless given ``--out``).

- ``worker_kill``: kill -9 the worker while escalations fall due, then restart it;
- ``server_restart``: stop (SIGTERM, then SIGKILL) and restart the dev server;
- ``chat_outage``: the chat webhook answers 500, then times out, then recovers;
- ``ledger_outage``: the ledger's PostgreSQL goes away, then comes back;
- ``races``: acknowledgements racing the breach timer, duplicates, closed tickets.

Shared: ``stack`` (the drill's stack, assembled from ``harness``: dev server, worker
process, HTTP sink, service), ``tickets``, ``policy`` (the drill policy), ``verdict``
(counting and the verdict line). The machinery itself (processes, the dev-server launcher,
sinks, scratch PostgreSQL and the TCP proxy to cut) is ``harness``, shared with the tests,
the benchmarks and ``make run``.
"""
