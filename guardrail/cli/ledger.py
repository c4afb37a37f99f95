"""``guardrail ledger``: the ledger's schema, and restoring a store from it.

``ledger migrate`` brings a database to the current schema (the writer does it too, on
its first connection). ``ledger rebuild`` restores a day's spend and its month's into the
store from the ledger, for a Redis that restarted without persistence: only what the store
lacks is added, so running it twice, or on a store that kept everything, changes nothing
(see :mod:`guardrail.ledger.rebuild`). Flush the applications' ledger sinks first: records
still in a spool are not in the ledger yet.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from guardrail.cli.render import CliError, console, print_table, progress, usd
from guardrail.cli.usage import DATE, ledger_database
from guardrail.errors import ConfigurationError

__all__ = ["ledger"]


@click.group()
def ledger() -> None:
    """The usage ledger: its schema, and rebuilding a store from it."""


_LEDGER = click.option(
    "--ledger",
    "ledger_url",
    required=True,
    envvar="GUARDRAIL_LEDGER",
    metavar="URL",
    help="sqlite:///path.db or postgresql://... (or $GUARDRAIL_LEDGER)",
)


@ledger.command()
@_LEDGER
def migrate(ledger_url: str) -> int:
    """Bring the ledger's database to the current schema."""
    from guardrail.ledger.schema import SCHEMA_VERSION

    with ledger_database(ledger_url):  # migrates
        pass
    print(f"ledger schema version {SCHEMA_VERSION}: {_safe(ledger_url)}")
    return 0


@ledger.command()
@_LEDGER
@click.option(
    "--store",
    "store_url",
    required=True,
    envvar="GUARDRAIL_STORE",
    metavar="URL",
    help="the store to restore: redis://host:6379/0 (or $GUARDRAIL_STORE)",
)
@click.option("--prefix", default="guardrail", show_default=True, help="the store's key prefix")
@click.option("--timezone", default="UTC", show_default=True, help="the store's time zone")
@click.option(
    "--day",
    type=DATE,
    help="the day to restore, YYYY-MM-DD (default: today); its month is restored up to it",
)
@click.option("--dry-run", is_flag=True, help="show what is missing, change nothing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def rebuild(
    ledger_url: str,
    store_url: str,
    prefix: str,
    timezone: str,
    day: datetime | None,
    dry_run: bool,
    as_json: bool,
) -> int:
    """Restore a day's and its month's spend into the store from the ledger."""
    from guardrail.ledger.rebuild import rebuild as run_rebuild
    from guardrail.stores.urls import open_store

    if store_url.startswith("memory://"):
        raise CliError("a memory:// store lives in one process: rebuild a redis:// store", 2)
    try:
        store = open_store(store_url, prefix=prefix, timezone=timezone)
    except ConfigurationError as exc:
        raise CliError(str(exc), status=2) from None
    with ledger_database(ledger_url) as db:
        meter = progress(sys.stderr, "restoring: {task.completed:,}/{task.total:,} settlements")
        task = meter.add_task("rebuild", total=None)
        shown = not dry_run and not as_json and sys.stderr.isatty()
        if shown:
            meter.start()
        try:
            result = run_rebuild(
                db,
                store,
                day=day.date() if day else None,
                dry_run=dry_run,
                progress=lambda done, total: meter.update(task, completed=done, total=total),
            )
        except Exception as exc:  # the store failed (redis.ConnectionError...): one line
            if isinstance(exc, CliError):
                raise
            raise CliError(f"the store failed during the rebuild: {exc!r}") from None
        finally:
            if shown:
                meter.stop()
    if as_json:
        doc = {
            "day": result.day,
            "applied": result.applied,
            "cost_usd": usd(result.cost_usd),
            "gaps": [
                {
                    "scope": g.scope,
                    "day": g.day,
                    "model": g.model,
                    "cost_usd": usd(g.cost_usd),
                    "input_tokens": g.input_tokens,
                    "output_tokens": g.output_tokens,
                    "requests": g.requests,
                }
                for g in result.gaps
            ],
            "store_ahead": [{"scope": s, "day": d} for s, d in result.ahead],
        }
        print(json.dumps(doc, indent=2))
        return 0
    out = sys.stdout
    if not result.gaps:
        print(
            f"the store has everything the ledger has for {result.day[:7]} up to "
            f"{result.day}: nothing to restore"
        )
    else:
        rows = [["scope", "day", "model", "cost $", "input tokens", "output tokens", "requests"]]
        rows += [
            [
                g.scope,
                g.day,
                g.model,
                "$" + usd(g.cost_usd),
                f"{g.input_tokens:,}",
                f"{g.output_tokens:,}",
                f"{g.requests:,}",
            ]
            for g in result.gaps
        ]
        verb = "would restore" if dry_run else "restored"
        print_table(rows, "<<<>>>>", out, title=f"{verb} ${usd(result.cost_usd)} in total")
    for scope, d in result.ahead:
        console(sys.stderr).print(
            f"{scope} on {d}: the store has more than the ledger (left as is; is a sink's "
            "spool not replayed yet?)",
            markup=False,
        )
    return 0


def _safe(url: str) -> str:
    """A URL without its password, for printing."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.rsplit("@", 1)
    return f"{scheme}://{user.split(':', 1)[0]}@{host}"
