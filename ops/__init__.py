"""The ops CLI (``support-ops`` / ``python -m ops``): tickets, replay and policy versions.

- ``cli``: the arguments and the dispatch of each command (``cli()`` runs one, ``main()``
  is the console script);
- ``tickets``: ``list``, ``show``, ``ack`` / ``resolve`` / ``reply`` / ``wait``, ``watch``;
- ``replay``: ``replay``;
- ``policy``: ``policy diff`` / ``adopt`` / ``archive`` / ``versions``;
- ``output``: times, durations, tables, a ticket's status, JSON;
- ``common``: exit codes, the errors that end a command, the connection to Temporal.
"""
