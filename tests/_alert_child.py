"""A process of the once-across-processes alert test (tests/test_observe_alerts.py): kept
apart so that a spawned child imports guardrail and redis only."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from guardrail import Alerts, ManualClock, RedisStore, UsageRecord
from guardrail.observe import AlertEvent, RefusalRule
from guardrail.observe.sinks import Refusal


def fire_one_refusal(url: str, prefix: str, start: float, barrier: Any, results: Any) -> None:
    """Evaluate one refused call of ``u-1`` with a RefusalRule on a Redis store shared
    with the other process; report (fired, suppressed, the keys delivered)."""
    clock = ManualClock(start)
    store = RedisStore.from_url(url, prefix=prefix, clock=clock)
    delivered: list[AlertEvent] = []
    alerts = Alerts([RefusalRule()], [delivered.append], backoff_seconds=0.0)
    alerts.bind(store)
    refusal = Refusal("budget", "daily_spend_usd", "u-1", Decimal("0.5"), Decimal(1), "USD")
    rejected = UsageRecord(
        tenant="u-1",
        scopes=("u-1",),
        model="gpt-4o",
        requested_model="gpt-4o",
        outcome="rejected",
        refusal=refusal,
        timestamp=clock(),
    )
    barrier.wait(30)  # both processes fire at the same moment
    alerts(rejected)
    alerts.flush(20)
    stats = alerts.stats
    results.put((stats.fired, stats.suppressed, [e.key for e in delivered]))
    alerts.close()
    store.close()
