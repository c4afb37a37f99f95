"""SpendThresholdRule fires once per cap and threshold in a window: its claim key names the
cap, so a cap raised the same day ($10 to $100) alerts at 50%, 80% and 100% of the new
one (the key named the limit and the share only, and the new cap's thresholds were
silenced until midnight; found by a review)."""

from __future__ import annotations

from decimal import Decimal

from guardrail import Alerts, ManualClock, MemoryStore
from guardrail.observe import AlertEvent, SpendThresholdRule
from guardrail.stores.base import ScopeLimits, usd_to_nanos
from tests._alerts import spent


def test_a_raised_cap_alerts_at_its_own_thresholds(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)
    events: list[AlertEvent] = []
    alerts = Alerts([SpendThresholdRule()], [events.append], refresh_seconds=0.0)
    alerts.bind(store)

    def call(n: int, usd: str, cap: int) -> None:
        limits = (ScopeLimits("acme", daily_nanos=usd_to_nanos(Decimal(cap))),)
        alerts(spent(store, usd, n, limits))
        assert alerts.flush(10)

    for n, usd in enumerate(["5", "3", "2"]):  # $10 of a $10 cap: 50%, 80%, 100%
        call(n, usd, cap=10)
    assert [e.figures["threshold"] for e in events] == [0.5, 0.8, 1.0]
    for n, usd in enumerate(["45", "35"], start=10):  # cap raised to $100: $55, then $90
        call(n, usd, cap=100)
    fired = [(e.figures["cap_usd"], e.figures["threshold"]) for e in events[3:]]
    assert fired == [("100", 0.5), ("100", 0.8)], alerts.stats
    alerts.close()
