"""The dashboard's figures: from the ledger (what was billed, the caps each scope's latest
call saw, refusals, alerts) and, when a store is given, today's live spend and holds (the
store is what the caps are enforced against; the ledger may trail it by a batch)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from guardrail.ledger.database import Database
from guardrail.ledger.reports import (
    Caps,
    ReportRow,
    recent_alerts,
    recent_refusals,
    report,
    scope_caps,
    spend_by_day,
    top_models,
    total,
)
from guardrail.stores.base import Store

__all__ = ["Dashboard", "TenantRow", "collect"]

GLOBAL = "_global"


@dataclass(frozen=True)
class TenantRow:
    """One scope today and this month, against its caps (None: no cap)."""

    scope: str
    today_usd: Decimal
    month_usd: Decimal
    requests_today: int
    daily_cap_usd: Decimal | None
    monthly_cap_usd: Decimal | None
    held_usd: Decimal | None = None
    """Reserved by calls in flight (only with a live store)."""

    @property
    def share(self) -> float:
        """The larger of the day's and the month's share of their caps (0 without caps)."""
        shares = [
            float(spent / cap)
            for spent, cap in (
                (self.today_usd, self.daily_cap_usd),
                (self.month_usd, self.monthly_cap_usd),
            )
            if cap
        ]
        return max(shares, default=0.0)


@dataclass(frozen=True)
class Dashboard:
    generated_at: datetime
    day: date
    tenants: tuple[TenantRow, ...]
    more_tenants: int
    """Scopes with spend this month beyond the ones shown."""
    series: tuple[tuple[date, Decimal], ...]
    """Spend per day, every day of the range (zero where nothing was spent)."""
    top_models: tuple[ReportRow, ...]
    refusals: tuple[dict[str, Any], ...]
    alerts: tuple[dict[str, Any], ...]
    live: bool
    """Whether today's figures come from the store (else from the ledger)."""
    today_usd: Decimal
    month_usd: Decimal
    calls_today: int


def collect(
    db: Database,
    store: Store | None = None,
    *,
    timezone: str = "UTC",
    now: float | None = None,
    days: int = 30,
    max_tenants: int = 50,
) -> Dashboard:
    """The figures for the page: the last ``days`` days, the scopes nearest their caps
    first (at most ``max_tenants``)."""
    tz = ZoneInfo(timezone)
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz)
    today = moment.date()
    first_of_month = today.replace(day=1)
    rows = report(db, by=("tenant", "day"), since=first_of_month, until=today, include_global=True)
    month: dict[str, Decimal] = {}
    day_usd: dict[str, Decimal] = {}
    requests: dict[str, int] = {}
    for row in rows:
        scope, d = row.key
        month[scope] = month.get(scope, Decimal(0)) + row.cost_usd
        if d == today.isoformat():
            day_usd[scope] = row.cost_usd
            requests[scope] = row.requests
    caps = scope_caps(db)
    scopes = sorted(set(month) | set(caps))
    tenants = [
        TenantRow(
            scope=s,
            today_usd=day_usd.get(s, Decimal(0)),
            month_usd=month.get(s, Decimal(0)),
            requests_today=requests.get(s, 0),
            daily_cap_usd=caps.get(s, Caps(None, None)).daily_usd,
            monthly_cap_usd=caps.get(s, Caps(None, None)).monthly_usd,
        )
        for s in scopes
        if s != GLOBAL
    ]
    tenants.sort(key=lambda t: (-t.share, -t.month_usd, t.scope))
    shown = tenants[:max_tenants]
    if store is not None:
        shown = _live(store, shown, today)
        shown.sort(key=lambda t: (-t.share, -t.month_usd, t.scope))
    start = today - timedelta(days=days - 1)
    spent = dict(spend_by_day(db, since=start, until=today))
    series = tuple(
        (start + timedelta(n), spent.get((start + timedelta(n)).isoformat(), Decimal(0)))
        for n in range(days)
    )
    return Dashboard(
        generated_at=moment,
        day=today,
        tenants=tuple(shown),
        more_tenants=max(0, len(tenants) - len(shown)),
        series=series,
        top_models=tuple(top_models(db, since=first_of_month, until=today)),
        refusals=tuple(recent_refusals(db, limit=10)),
        alerts=tuple(recent_alerts(db, limit=10)),
        live=store is not None,
        today_usd=series[-1][1],
        month_usd=total(db, since=first_of_month, until=today).cost_usd,
        calls_today=total(db, since=today, until=today).requests,
    )


def _live(store: Store, rows: list[TenantRow], today: date) -> list[TenantRow]:
    """The rows with the store's figures for today and the month (what the caps enforce).
    A store that fails is asked no more: the ledger's figures are still worth showing."""
    live: list[TenantRow] = []
    for n, row in enumerate(rows):
        try:
            usage = store.usage(row.scope, today)
        except Exception:
            return [*live, *rows[n:]]
        live.append(
            TenantRow(
                scope=row.scope,
                today_usd=usage.spent_usd,
                month_usd=usage.month_spent_usd,
                requests_today=usage.requests,
                daily_cap_usd=row.daily_cap_usd,
                monthly_cap_usd=row.monthly_cap_usd,
                held_usd=usage.reserved_usd,
            )
        )
    return live
