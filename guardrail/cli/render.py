"""What every command shares: the error it reports, money as text, tables and progress
bars drawn with rich (plain, unwrapped text when the output is not a terminal, so a
table piped to ``awk`` splits on whitespace)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

__all__ = ["PROG", "CliError", "console", "print_table", "progress", "signed_usd", "usd"]

PROG = "guardrail"


class CliError(Exception):
    """An error reported as one line on stderr; ``status`` is the exit code."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def usd(amount: Decimal | None) -> str:
    """Every digit of a Decimal, in fixed point (never ``2.5E-7``, never through a float)."""
    if amount is None:
        return "-"
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def signed_usd(amount: Decimal | None) -> str:
    if amount is None:
        return "-"
    return ("-$" if amount < 0 else "+$") + usd(abs(amount))


def console(stream: TextIO, *, wide: bool = False) -> Console:
    """A rich console on ``stream``: a terminal's colours, or no escape codes when
    ``stream`` is a pipe or a file. ``wide``: never fit to the terminal's width (a table
    keeps every figure whole; the terminal wraps its lines)."""
    terminal = stream.isatty()
    return Console(
        file=stream,
        width=100_000 if wide or not terminal else None,
        force_terminal=None if terminal else False,
        highlight=False,
        soft_wrap=True,
    )


def print_table(
    rows: Sequence[Sequence[str]], align: str, out: TextIO, *, title: str | None = None
) -> None:
    """``rows`` (the first is the header) as a table; ``align`` has '<' or '>' per column."""
    # Every cell is Text, never markup: a file named "b[draft].txt" or a model named
    # "x[/y]" is printed as it is.
    table = Table(
        box=None,
        pad_edge=False,
        padding=(0, 1),
        title=None if title is None else Text(title),
        header_style="bold",
    )
    for header, a in zip(rows[0], align, strict=True):
        table.add_column(Text(header), justify="left" if a == "<" else "right", no_wrap=True)
    for row in rows[1:]:
        table.add_row(*(Text(_printable(cell)) for cell in row))
    shown = console(out, wide=True)
    if shown.is_terminal:
        shown.print(table)
        return
    with shown.capture() as captured:  # a pipe gets no padding at the ends of lines
        shown.print(table)
    out.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(cell: str) -> str:
    """A cell with its control characters written out (``\\n``, ``\\x1b``): a model name a
    caller chose must not forge a row or send the terminal an escape sequence."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], cell)


def progress(stream: TextIO, description: str) -> Progress:
    """A progress bar on ``stream``: cleared when done in a terminal, its last state left
    as one line in a log."""
    shown = console(stream)
    return Progress(
        TextColumn(description),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=shown,
        transient=shown.is_terminal,
    )
