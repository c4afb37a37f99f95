"""``guardrail usage``: reports from the ledger, for people (a table) and tools (CSV, JSON).

Totals per tenant, model and/or day (``--by tenant,model``), or with ``--records`` every
record (the audit trail: one line per call, refusals included). Tenant figures count what
the store counts: a parent's include its children's, and equal the store's for the same
days. Money is a decimal string in CSV and JSON (never a float).

``--format json`` prints ``{"since", "until", "by", "tenant", "rows": [...], "total": {...}}``;
with ``--records`` it prints JSON lines, one record per line, so an export of millions is
streamed (with a progress bar on a terminal).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, TextIO, cast
from zoneinfo import ZoneInfo

import click

from guardrail.cli.render import CliError, print_table, progress, usd
from guardrail.errors import ConfigurationError
from guardrail.ledger.database import Database, DatabaseError, connect
from guardrail.ledger.reports import By, count_records, iter_records, report, total

__all__ = ["DATE", "ledger_database", "usage"]

DATE = click.DateTime(formats=["%Y-%m-%d"])
PROGRESS_MIN_RECORDS = 5_000
RECORD_COLUMNS = (
    "time",
    "day",
    "tenant",
    "model",
    "outcome",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "reserved_usd",
    "request_id",
    "reservation_id",
    "record_id",
    "error",
)


@contextmanager
def ledger_database(url: str) -> Iterator[Database]:
    """The ledger at ``url``, migrated to the current schema (an error says which URL)."""
    from guardrail.ledger.schema import migrate

    try:
        db = connect(url)
        migrate(db)
    except ConfigurationError as exc:  # an unknown URL, psycopg missing
        raise CliError(str(exc), status=2) from None
    except DatabaseError as exc:
        raise CliError(str(exc)) from None
    try:
        yield db
    except DatabaseError as exc:
        raise CliError(str(exc)) from None
    finally:
        db.close()


def _days(since: datetime | None, until: datetime | None, timezone: str) -> tuple[date, date]:
    try:
        today = datetime.now(ZoneInfo(timezone)).date()
    except (KeyError, ValueError):
        raise CliError(f"unknown time zone {timezone!r}", status=2) from None
    last = until.date() if until else today
    first = since.date() if since else last.replace(day=1)
    if last < first:
        raise CliError(f"--until {last} is before --since {first}", status=2)
    return first, last


def _by(text: str) -> tuple[By, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or any(p not in ("tenant", "model", "day") for p in parts):
        raise CliError(f"--by is tenant, model, day or several joined by commas, got {text!r}", 2)
    return cast(tuple[By, ...], tuple(dict.fromkeys(parts)))


@click.command()
@click.option(
    "--ledger",
    "ledger_url",
    required=True,
    envvar="GUARDRAIL_LEDGER",
    metavar="URL",
    help="sqlite:///path.db or postgresql://... (or $GUARDRAIL_LEDGER)",
)
@click.option("--tenant", metavar="T", help="only what was charged to this scope")
@click.option("--since", type=DATE, help="first day, YYYY-MM-DD (default: the 1st of the month)")
@click.option("--until", type=DATE, help="last day, YYYY-MM-DD (default: today)")
@click.option(
    "--by",
    "by_text",
    default="tenant",
    show_default=True,
    metavar="KEYS",
    help="group by tenant, model, day, or several joined by commas",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--records", is_flag=True, help="every record (the audit trail), not totals")
@click.option(
    "--output",
    "-o",
    type=click.File("w", encoding="utf-8", lazy=True),
    default="-",
    help="write here instead of standard output",
)
@click.option(
    "--timezone", default="UTC", show_default=True, help="the store's time zone: what 'today' means"
)
@click.option("--include-global", is_flag=True, help="with --by tenant, the _global scope too")
@click.option(
    "--progress/--no-progress",
    "show_progress",
    default=None,
    help=f"progress bar on stderr for --records (default: on a terminal, past "
    f"{PROGRESS_MIN_RECORDS:,} records)",
)
def usage(
    ledger_url: str,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    by_text: str,
    fmt: str,
    records: bool,
    output: TextIO,
    timezone: str,
    include_global: bool,
    show_progress: bool | None,
) -> int:
    """Usage reports from the ledger: totals, or every record."""
    first, last = _days(since, until, timezone)
    by = _by(by_text)
    with ledger_database(ledger_url) as db:
        if records:
            _export(db, output, fmt, tenant, first, last, show_progress)
            return 0
        rows = report(
            db, by=by, tenant=tenant, since=first, until=last, include_global=include_global
        )
        whole = total(db, tenant=tenant, since=first, until=last)
    dicts = [row.as_dict(by) for row in rows]
    if fmt == "json":
        doc = {
            "since": first.isoformat(),
            "until": last.isoformat(),
            "by": list(by),
            "tenant": tenant,
            "rows": dicts,
            "total": whole.as_dict(()),
        }
        print(json.dumps(doc, indent=2), file=output)
    elif fmt == "csv":
        writer = csv.DictWriter(output, fieldnames=[*by, *_FIGURES], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in d.items()} for d in dicts)
    else:
        table = [[*by, "cost $", "input tokens", "output tokens", "requests"]]
        table += [
            [
                *r.key,
                "$" + usd(r.cost_usd),
                f"{r.input_tokens:,}",
                f"{r.output_tokens:,}",
                f"{r.requests:,}",
            ]
            for r in rows
        ]
        table.append(
            [
                "total",
                *[""] * (len(by) - 1),
                "$" + usd(whole.cost_usd),
                f"{whole.input_tokens:,}",
                f"{whole.output_tokens:,}",
                f"{whole.requests:,}",
            ]
        )
        print_table(
            table,
            "<" * len(by) + ">>>>",
            output,
            title=f"usage {first} to {last}" + (f", {tenant}" if tenant else ""),
        )
        if "tenant" in by:
            print(
                "A parent's figures include its children's; the total counts each call once.",
                file=output,
            )
    return 0


_FIGURES = ("cost_usd", "input_tokens", "output_tokens", "requests")


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet will not run: tenants and model names come from callers,
    and ``=HYPERLINK(...)`` in a CSV is a formula to Excel (OWASP's CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _record_row(record: dict[str, Any]) -> dict[str, Any]:
    when = datetime.fromtimestamp(float(record["timestamp"]), ZoneInfo("UTC")).isoformat()
    return {"time": when, **{k: record.get(k) for k in RECORD_COLUMNS if k != "time"}}


def _export(
    db: Database,
    output: TextIO,
    fmt: str,
    tenant: str | None,
    first: date,
    last: date,
    show_progress: bool | None,
) -> None:
    """Every record, streamed a page at a time, with a progress bar."""
    expected = count_records(db, tenant=tenant, since=first, until=last)
    if show_progress is None:
        show_progress = sys.stderr.isatty() and expected > PROGRESS_MIN_RECORDS
    meter = progress(sys.stderr, "exporting: {task.completed:,}/{task.total:,} records")
    task = meter.add_task("export", total=expected)
    stream = iter_records(db, tenant=tenant, since=first, until=last)
    if show_progress:
        meter.start()
    try:
        if fmt == "table":
            rows = [list(RECORD_COLUMNS[:-1])]
            for record in stream:
                row = _record_row(record)
                rows.append(["" if row[k] is None else str(row[k]) for k in RECORD_COLUMNS[:-1]])
                meter.advance(task)
            print_table(rows, "<<<<<>>>>>><<<", output)
            return
        writer = csv.DictWriter(output, fieldnames=RECORD_COLUMNS, lineterminator="\n")
        if fmt == "csv":
            writer.writeheader()
        for record in stream:
            if fmt == "csv":
                writer.writerow({k: _csv_cell(v) for k, v in _record_row(record).items()})
            else:
                output.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
            meter.advance(task)
    finally:
        if show_progress:
            meter.stop()
