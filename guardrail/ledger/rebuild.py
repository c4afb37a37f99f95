"""Restoring the store's spend from the ledger: for a Redis that restarted without
persistence (it forgets the day's and the month's spend, so every cap would start over).

What it restores is the *gap*: per scope, day and model, the ledger's totals minus what
the store has now. That makes it safe to run on a store that kept everything (nothing to
do), on one that lost everything, on one that has the calls made since its restart, and
twice (the second run finds no gap). The month is restored to the ledger's month to date
and never past it: the days are walked from the latest back, and a day's cost gap is
capped by what the month still lacks (a store whose old daily rows expired keeps its
month total; those days are not added to the month again).

Each gap is settled as the store settles a call it never reserved (a fail-open call):
one settlement with the gap's cost and tokens, plus one empty settlement per further
missing request, so the store's request counts match too.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from guardrail.ledger.database import Database
from guardrail.stores.base import (
    Reservation,
    Settlement,
    Store,
    nanos_to_usd,
    usd_to_nanos,
)

__all__ = ["Gap", "RebuildResult", "rebuild"]


@dataclass(frozen=True)
class Gap:
    """What the store lacked of one scope's usage of one model in one day."""

    scope: str
    day: str
    model: str
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    requests: int


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild restored (or, with ``dry_run``, would restore)."""

    day: str
    gaps: tuple[Gap, ...]
    ahead: tuple[tuple[str, str], ...]
    """(scope, day) pairs where the store has more than the ledger (left as they are: the
    ledger is behind, for example with records still in a sink's spool)."""
    applied: bool

    @property
    def cost_usd(self) -> Decimal:
        return sum((g.cost_usd for g in self.gaps), Decimal(0))


@dataclass
class _Totals:
    cost_nanos: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0


def _ledger_totals(db: Database, first: date, last: date) -> dict[tuple[str, str, str], _Totals]:
    rows = db.execute(
        "SELECT s.scope, s.day, r.model, SUM(r.cost_nanos), SUM(r.input_tokens), "
        "SUM(r.output_tokens), COUNT(*) FROM usage_scopes s "
        "JOIN usage_records r ON r.record_id = s.record_id "
        "WHERE r.settled = 1 AND s.day >= ? AND s.day <= ? GROUP BY s.scope, s.day, r.model",
        (first.isoformat(), last.isoformat()),
    )
    return {
        (str(scope), str(day), str(model)): _Totals(int(cost), int(inp), int(out), int(n))
        for scope, day, model, cost, inp, out, n in rows
    }


def _store_totals(store: Store, first: date, last: date) -> dict[tuple[str, str, str], _Totals]:
    return {
        (row.scope, row.day.isoformat(), row.model): _Totals(
            usd_to_nanos(row.cost_usd), row.input_tokens, row.output_tokens, row.requests
        )
        for row in store.usage_report(None, first, last)
    }


def rebuild(
    db: Database,
    store: Store,
    *,
    day: date | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildResult:
    """Restore ``day``'s spend (default: the store's today) and its month's, up to that
    day, into ``store`` from the ledger ``db``; see the module doc. ``progress(done,
    total)`` is called as settlements are applied."""
    last = day or store.windows.local(store.now()).date()
    first = last.replace(day=1)
    ledger = _ledger_totals(db, first, last)
    have = _store_totals(store, first, last)

    by_scope: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for scope, d, model in ledger:
        by_scope[scope].append((d, model))
    gaps: list[Gap] = []
    ahead: set[tuple[str, str]] = set()
    for scope, keys in sorted(by_scope.items()):
        month_ledger = sum(ledger[(scope, d, m)].cost_nanos for d, m in keys)
        month_store = usd_to_nanos(store.usage(scope, last).month_spent_usd)
        month_gap = month_ledger - month_store
        for d, model in sorted(keys, reverse=True):  # the latest day first: today matters most
            want, got = ledger[(scope, d, model)], have.get((scope, d, model), _Totals())
            cost = min(want.cost_nanos - got.cost_nanos, max(month_gap, 0))
            inputs = want.input_tokens - got.input_tokens
            outputs = want.output_tokens - got.output_tokens
            requests = want.requests - got.requests
            if min(want.cost_nanos - got.cost_nanos, inputs, outputs, requests) < 0:
                ahead.add((scope, d))
            cost, inputs, outputs, requests = (max(v, 0) for v in (cost, inputs, outputs, requests))
            if cost or inputs or outputs or requests:
                month_gap -= cost
                gaps.append(
                    Gap(scope, d, model, nanos_to_usd(cost), inputs, outputs, max(requests, 1))
                )
    if not dry_run:
        _apply(store, gaps, progress)
    return RebuildResult(
        day=last.isoformat(), gaps=tuple(gaps), ahead=tuple(sorted(ahead)), applied=not dry_run
    )


def _apply(store: Store, gaps: list[Gap], progress: Callable[[int, int], None] | None) -> None:
    total = sum(g.requests for g in gaps)
    done = 0
    now = store.now()
    for gap in gaps:
        for n in range(gap.requests):
            full = n == 0  # the first carries the cost and tokens, the rest count requests
            store.settle(
                Reservation(
                    id=f"rebuild-{os.urandom(12).hex()}",
                    scopes=(gap.scope,),
                    cost_nanos=0,
                    # As many tokens "reserved" as settled: the store's token buckets (this
                    # minute's, today's) are left as they are, never charged for past days.
                    tokens=gap.input_tokens + gap.output_tokens if full else 0,
                    day=gap.day,
                    month=gap.day[:7],
                    created_at=now,
                    expires_at=now,
                    model=gap.model,
                ),
                Settlement(
                    cost_nanos=usd_to_nanos(gap.cost_usd) if full else 0,
                    input_tokens=gap.input_tokens if full else 0,
                    output_tokens=gap.output_tokens if full else 0,
                    model=gap.model,
                ),
            )
            done += 1
            if progress is not None:
                progress(done, total)
