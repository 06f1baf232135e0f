"""The command lines' console (``python -m ops``, ``python -m ledger report``): colour and
the terminal's width on a terminal, plain text without a width limit otherwise."""

from __future__ import annotations

import io
from typing import TextIO

from rich.console import Console


def make_console(out: TextIO) -> Console:
    """Colour and the terminal's width on a terminal; plain text without a width limit
    otherwise (``emit`` writes it). Markup and emoji off: ids and notes are data, printed
    as they are ("[bold]" or ":fire:" in one is printed as is)."""
    terminal = out.isatty()
    return Console(
        file=out if terminal else io.StringIO(),
        width=None if terminal else 1000,
        no_color=not terminal,
        markup=False,
        emoji=False,
        highlight=False,
    )


def emit(console: Console, out: TextIO) -> None:
    """Write what a plain (non-terminal) console recorded, trailing blanks trimmed."""
    if isinstance(console.file, io.StringIO):
        text = console.file.getvalue()
        console.file.seek(0)
        console.file.truncate()
        out.write("\n".join(line.rstrip() for line in text.split("\n")))
        out.flush()
