"""Alert claims on the memory store (``MemoryStore.claim_once``): "once per scope per
window" holds for as many live claims as a deployment of one process makes (a refusal
per end user per hour): 10,001 tenants refused once each made the first ones' claims be
dropped, and their next refusal in the same hour alerted again (found by a review)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from guardrail import Alerts, ManualClock, MemoryStore, UsageRecord
from guardrail.observe import AlertEvent, RefusalRule
from guardrail.observe.sinks import Refusal
from guardrail.stores import memory


def _refused(clock: ManualClock, tenant: str) -> UsageRecord:
    return UsageRecord(
        tenant=tenant,
        scopes=(tenant,),
        model="gpt-4o",
        requested_model="gpt-4o",
        outcome="rejected",
        timestamp=clock(),
        refusal=Refusal(
            kind="budget",
            limit="daily_spend_usd",
            scope=tenant,
            requested=Decimal("0.01"),
            cap=Decimal("1"),
            unit="USD",
            remaining=Decimal("0"),
        ),
    )


def test_a_refusal_alerts_once_per_hour_with_many_tenants() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    events: list[AlertEvent] = []
    alerts = Alerts([RefusalRule()], [events.append], queue_size=20_000)
    alerts.bind(MemoryStore(clock=clock))
    try:
        for n in range(10_001):
            alerts(_refused(clock, f"user-{n}"))
        assert alerts.flush(60)
        assert len(events) == 10_001
        clock.advance(60)  # one minute later, the same hour: user-0 is refused again
        alerts(_refused(clock, "user-0"))
        assert alerts.flush(10)
        assert len([e for e in events if e.scope == "user-0"]) == 1
    finally:
        alerts.close()


def test_live_claims_are_kept_up_to_three_quarters_of_the_bound() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    store = MemoryStore(clock=clock)
    live = memory._MAX_CLAIMS * 3 // 4
    assert all(store.claim_once(f"s{n}", "k", 3600) for n in range(live))
    assert not store.claim_once("s0", "k", 3600)  # the first is still claimed
    clock.advance(3601)  # all expired: pruned, and claimable again
    assert store.claim_once(f"s{live}", "k", 3600) and store.claim_once("s0", "k", 3600)
