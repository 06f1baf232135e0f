"""What every ops command shares: the exit codes, the two errors that end a command with
one line on stderr, and the connection to Temporal."""

from __future__ import annotations

from temporalio.client import Client

from runtime.codec import CodecConfigError
from runtime.connection import connect

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# `policy diff`: some open ticket's deadline or ladder would change (or could not be compared).
EXIT_CHANGES = 3


class Failed(Exception):
    """A one-line error for stderr, exit code 1."""


class BadInput(Exception):
    """Bad input found after parsing (an invalid policy file): exit 2, one line per problem."""


async def connect_or_fail() -> Client:
    try:
        return await connect()
    except RuntimeError as err:
        raise Failed(f"cannot connect to Temporal: {err}") from err
    except CodecConfigError as err:
        raise Failed(f"payload encryption: {err}") from err
