"""What every process runs on: the Temporal connection, payload codec, telemetry and logs, the
signed acknowledge links and the SMTP relay; how a process runs until stopped and exits
(``process``), and the command lines' console (``console``)."""
