"""A call reserved before midnight and settled after it is charged to the day it was
reserved in (``UsageRecord.day``, the store's day), and its spend alerts are that day's:
SpendThresholdRule read the spend of the day of ``record.timestamp``, so the call that
took a scope from $4 to $9.50 of its $10 daily cap on 2026-11-23 (reserved at 23:59:50,
done at 00:00:05) never alerted, the rule seeing 2026-11-24's $0 (found by a review). The
same held for a record the alert worker evaluated after midnight (a queue lag)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from guardrail import Alerts, ManualClock, MemoryStore, UsageRecord
from guardrail.observe import AlertEvent, SpendThresholdRule
from guardrail.stores.base import ScopeLimits, usd_to_nanos
from tests._alerts import spent


def test_a_call_across_midnight_alerts_on_the_day_it_was_charged_to() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 23, 59, 0, tzinfo=UTC))
    store = MemoryStore(clock=clock)
    events: list[AlertEvent] = []
    alerts = Alerts([SpendThresholdRule(shares=(0.8,))], [events.append], refresh_seconds=0.0)
    alerts.bind(store)
    cap = (ScopeLimits("acme", daily_nanos=usd_to_nanos(Decimal(10))),)

    def settle(n: int, usd: str, advance: float) -> UsageRecord:
        return spent(store, usd, n, cap, during=advance, clock=clock)

    alerts(settle(1, "4", 0))  # 23:59:00: $4 of $10
    clock.advance(50)  # 23:59:50: a long call starts ...
    late = settle(2, "5.5", 15)  # ... and ends at 00:00:05: $9.50 of 2026-11-23's $10
    assert late.day == "2026-11-23" and store.usage(
        "acme", late_day := datetime(2026, 11, 23).date()
    ).spent_usd == Decimal("9.5"), late_day
    alerts(late)
    assert alerts.flush(10)
    alerts.close()
    assert [e.window for e in events] == ["2026-11-23"], alerts.stats
