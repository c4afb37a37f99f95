"""Reports from the ledger: usage per tenant (or any scope), model and day, spend over time,
recent refusals. Per-scope figures count what the store counts: the records it settled,
charged to every scope of the call (a parent's usage includes its children's)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from guardrail.errors import ConfigurationError
from guardrail.ledger.database import Database
from guardrail.stores.base import nanos_to_usd

__all__ = [
    "Caps",
    "ReportRow",
    "count_records",
    "iter_records",
    "recent_alerts",
    "recent_refusals",
    "report",
    "scope_caps",
    "spend_by_day",
    "top_models",
    "total",
]

By = Literal["tenant", "model", "day"]
_COLUMNS = {"tenant": "s.scope", "model": "r.model", "day": "s.day"}


@dataclass(frozen=True)
class ReportRow:
    """One row of a report: the key it is grouped by, and its totals."""

    key: tuple[str, ...]
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    requests: int

    def as_dict(self, by: Sequence[str]) -> dict[str, Any]:
        return {
            **dict(zip(by, self.key, strict=True)),
            "cost_usd": str(self.cost_usd),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
        }


def _where(
    tenant: str | None, since: date | None, until: date | None, day: str = "s.day"
) -> tuple[str, list[Any]]:
    clauses, params = ["r.settled = 1"], []
    if tenant is not None:
        clauses.append("s.scope = ?")
        params.append(tenant)
    if since is not None:
        clauses.append(f"{day} >= ?")
        params.append(since.isoformat())
    if until is not None:
        clauses.append(f"{day} <= ?")
        params.append(until.isoformat())
    return " AND ".join(clauses), params


def report(
    db: Database,
    *,
    by: Sequence[By] = ("tenant", "model", "day"),
    tenant: str | None = None,
    since: date | None = None,
    until: date | None = None,
    include_global: bool = False,
) -> list[ReportRow]:
    """Totals grouped ``by`` tenant (any scope: a parent's rows include its children's),
    model and/or day, sorted by key. Not grouped by tenant, every call counts once (in
    ``tenant``'s usage, when given)."""
    if not by or any(b not in _COLUMNS for b in by):
        raise ConfigurationError(f"a report is grouped by tenant, model and/or day, got {list(by)}")
    if "tenant" not in by and tenant is None:  # each record once, not once per scope
        where, params = _where(None, since, until, day="r.day")
        source = "usage_records r"
        columns = {"model": "r.model", "day": "r.day"}
    else:
        where, params = _where(tenant, since, until)
        if not include_global and tenant is None:
            where += " AND s.scope <> '_global'"
        source = "usage_scopes s JOIN usage_records r ON r.record_id = s.record_id"
        columns = _COLUMNS
    keys = ", ".join(columns[b] for b in by)
    rows = db.execute(
        f"SELECT {keys}, SUM(r.cost_nanos), SUM(r.input_tokens), SUM(r.output_tokens), COUNT(*) "
        f"FROM {source} WHERE {where} GROUP BY {keys}",
        params,
    )
    n = len(by)
    found = [
        ReportRow(
            key=tuple(str(v) for v in row[:n]),
            cost_usd=nanos_to_usd(int(row[n])),
            input_tokens=int(row[n + 1]),
            output_tokens=int(row[n + 2]),
            requests=int(row[n + 3]),
        )
        for row in rows
    ]
    return sorted(found, key=lambda r: r.key)  # code-point order on every database


def total(
    db: Database, *, tenant: str | None = None, since: date | None = None, until: date | None = None
) -> ReportRow:
    """The sum of every settled call (charged to ``tenant``, when given) in the days."""
    rows = report(db, by=("day",), tenant=tenant, since=since, until=until)
    return ReportRow(
        key=(),
        cost_usd=sum((r.cost_usd for r in rows), Decimal(0)),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
        requests=sum(r.requests for r in rows),
    )


def spend_by_day(
    db: Database, *, since: date, until: date, tenant: str | None = None
) -> list[tuple[str, Decimal]]:
    """(day, spend) for every day with spend in the range (all tenants, or one scope)."""
    return [
        (r.key[0], r.cost_usd)
        for r in report(db, by=("day",), tenant=tenant, since=since, until=until)
    ]


def top_models(db: Database, *, since: date, until: date, limit: int = 10) -> list[ReportRow]:
    rows = report(db, by=("model",), since=since, until=until)
    return sorted(rows, key=lambda r: (-r.cost_usd, r.key))[:limit]


def recent_refusals(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The latest refused calls: when, who, which limit, and the figures."""
    rows = db.execute(
        "SELECT ts, tenant, model, refusal_limit, record FROM usage_records "
        "WHERE outcome = 'rejected' ORDER BY ts DESC LIMIT ?",
        (limit,),
    )
    out = []
    for ts, tenant, model, limit_name, record in rows:
        refusal = json.loads(record).get("refusal") or {}
        out.append(
            {
                "ts": float(ts),
                "tenant": tenant,
                "model": model,
                "limit": limit_name or refusal.get("limit") or "",
                "requested": refusal.get("requested"),
                "cap": refusal.get("cap"),
                "unit": refusal.get("unit"),
            }
        )
    return out


@dataclass(frozen=True)
class Caps:
    """A scope's spending caps, as its latest call saw them (None: no cap)."""

    daily_usd: Decimal | None
    monthly_usd: Decimal | None


def scope_caps(db: Database) -> dict[str, Caps]:
    """Every scope's latest caps."""
    rows = db.execute("SELECT scope, daily_nanos, monthly_nanos FROM scope_limits")
    return {
        str(scope): Caps(
            None if daily is None else nanos_to_usd(int(daily)),
            None if monthly is None else nanos_to_usd(int(monthly)),
        )
        for scope, daily, monthly in rows
    }


def recent_alerts(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The latest alerts fired: when, which rule, about whom, and the line for a human."""
    rows = db.execute(
        "SELECT ts, rule, scope, tenant, text FROM alert_events ORDER BY ts DESC LIMIT ?",
        (limit,),
    )
    return [
        {"ts": float(ts), "rule": rule, "scope": scope, "tenant": tenant, "text": text}
        for ts, rule, scope, tenant, text in rows
    ]


def _records_where(
    tenant: str | None, since: date | None, until: date | None
) -> tuple[str, list[Any]]:
    clauses, params = ["1 = 1"], []
    if tenant is not None:
        clauses.append("record_id IN (SELECT record_id FROM usage_scopes WHERE scope = ?)")
        params.append(tenant)
    if since is not None:
        clauses.append("day >= ?")
        params.append(since.isoformat())
    if until is not None:
        clauses.append("day <= ?")
        params.append(until.isoformat())
    return " AND ".join(clauses), params


def count_records(
    db: Database, *, tenant: str | None = None, since: date | None = None, until: date | None = None
) -> int:
    """How many records :func:`iter_records` yields for the same filters."""
    where, params = _records_where(tenant, since, until)
    return int(db.execute(f"SELECT COUNT(*) FROM usage_records WHERE {where}", params)[0][0])


def iter_records(
    db: Database,
    *,
    tenant: str | None = None,
    since: date | None = None,
    until: date | None = None,
    page: int = 2000,
) -> Iterator[dict[str, Any]]:
    """Every record (refusals included) charged to ``tenant`` (any, when None) in the days
    given, oldest first, as the sinks got it: the audit trail. Read a page at a time, by
    (time, id), so an export of millions holds one page in memory."""
    where, params = _records_where(tenant, since, until)
    after: tuple[float, str] | None = None
    while True:
        clause, args = where, list(params)
        if after is not None:
            clause += " AND (ts > ? OR (ts = ? AND record_id > ?))"
            args += [after[0], after[0], after[1]]
        rows = db.execute(
            f"SELECT ts, record_id, record FROM usage_records WHERE {clause} "
            "ORDER BY ts, record_id LIMIT ?",
            [*args, page],
        )
        for _, _, record in rows:
            yield json.loads(record)
        if len(rows) < page:
            return
        after = (float(rows[-1][0]), str(rows[-1][1]))
