"""A renewal that fails is tried again, halfway to the hold's expiry, while more than
min(1 s, TTL / 8) of it is left. It was a flat 1 s: a renewal is due half a TTL before
expiry, so with reservation_ttl_seconds <= 2 one transient failure (a dropped Redis
connection) gave the hold up for good, and a second call spent the live call's room
(found by a review of the keeper)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, ManualClock, MemoryStore, Policy
from guardrail.engine.keeper import sync_keeper
from guardrail.testing import FakeOpenAIServer

MODEL = "gpt-4o"
MSG = [{"role": "user", "content": "Write a long essay."}]
TTL = 2.0


class OneBlip(MemoryStore):
    def __init__(self) -> None:
        super().__init__(clock=ManualClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC)))
        self.tries = 0

    def extend(self, reservation, ttl_seconds):  # type: ignore[no-untyped-def]
        self.tries += 1
        if self.tries == 1:
            raise ConnectionError("one dropped connection")
        return super().extend(reservation, ttl_seconds)


def _create(client):
    return client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100)


def test_one_failed_renewal_of_a_short_ttl_hold_is_tried_again() -> None:
    store = OneBlip()
    one = guardrail.estimate_cost(MODEL, guardrail.count_messages(MSG, MODEL), 100)
    guard = Guard(
        Policy(daily_spend_usd=one * Decimal("1.5"), reservation_ttl_seconds=TTL, loop_limit=None),
        store=store,
    )
    with FakeOpenAIServer(reply="lorem " * 50) as server:
        client = guard.wrap(
            openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
        )
        hold = server.enqueue_hold()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_create, client)
            try:
                hold.wait_held()
                store._clock.advance(1.0)  # due: 1 s left
                sync_keeper().renew_due()  # the blip
                for _ in range(6):  # 3 more seconds, in quarter-TTL steps
                    store._clock.advance(0.5)
                    sync_keeper().renew_due()
                assert store.tries >= 2, "the failed renewal was never tried again"
                assert guard.usage("default").reserved_usd == one
                with pytest.raises(BudgetExceeded):
                    _create(client)
            finally:
                hold.release()
                first.result(timeout=30)
