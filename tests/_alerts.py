"""A call's spend for the alert tests: reserved and settled in a store, and its record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from guardrail import UsageRecord
from guardrail.stores.base import ReservationRequest, ScopeLimits, Settlement, usd_to_nanos


def spent(
    store: Any,
    usd: str,
    n: int,
    limits: tuple[ScopeLimits, ...],
    *,
    during: float = 0.0,
    clock: Any = None,
) -> UsageRecord:
    """``usd`` reserved and settled for acme in ``store`` (``clock`` moved ``during``
    seconds between the two), and the record of it, counted against ``limits``."""
    nanos = usd_to_nanos(Decimal(usd))
    request = ReservationRequest(f"r-{n}", (ScopeLimits("acme"),), nanos, 0, 600, "gpt-4o")
    held = store.reserve(request)
    if during:
        clock.advance(during)
    store.settle(held, Settlement(nanos, 0, 0, "gpt-4o"))
    return UsageRecord(
        tenant="acme",
        scopes=("acme",),
        model="gpt-4o",
        requested_model="gpt-4o",
        outcome="ok",
        cost_usd=Decimal(usd),
        timestamp=store.now(),
        limits=limits,
        day=held.day,
        reservation_id=held.id,
    )
