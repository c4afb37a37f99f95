"""A call let through with on_store_error="fail_open" while Redis is down is reserved in
the store's local offline MemoryStore (recovery.offline), so this process cannot pass the
cap during the outage. The keeper renews that hold there (RedisStore.extend / aextend): it
once went to Redis only (down), so the local hold expired after one TTL while the call was
in flight and a second fail-open call spent the same room (found by a review)."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, ManualClock, Policy
from guardrail.engine.keeper import sync_keeper
from guardrail.stores.base import ReservationRequest, ScopeLimits
from guardrail.stores.redis import RedisStore
from guardrail.testing import FakeOpenAIServer
from tests._redis_helpers import free_port

MODEL = "gpt-4o"
MSG = [{"role": "user", "content": "Write a long essay."}]
TTL = 60


def _create(client):
    return client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100)


def test_a_fail_open_call_keeps_its_offline_hold_past_its_ttl(tmp_path) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis is down
    store = RedisStore.from_url(
        dead, prefix=f"rv-{uuid.uuid4().hex[:8]}", clock=clock, spool_path=tmp_path / "s.jsonl"
    )
    one = guardrail.estimate_cost(MODEL, guardrail.count_messages(MSG, MODEL), 100)
    guard = Guard(
        Policy(daily_spend_usd=one * Decimal("1.5"), reservation_ttl_seconds=TTL, loop_limit=None),
        store=store,
        on_store_error="fail_open",
    )
    with FakeOpenAIServer(reply="lorem " * 50) as server:
        client = guard.wrap(
            openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
        )
        hold = server.enqueue_hold()
        try:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(_create, client)
                hold.wait_held()
                assert sync_keeper().tracked(store) == 1
                # While the first call is in flight, the offline store refuses a second.
                with pytest.raises(BudgetExceeded):
                    _create(client)
                for _ in range(4):  # 124 s of the first call, renewing what is due
                    clock.advance(31)
                    sync_keeper().renew_due()
                # The first call is still live: its room must still be held locally.
                with pytest.raises(BudgetExceeded):
                    _create(client)
                hold.release()
                first.result(timeout=30)
        finally:
            hold.release()
            store.close()


def test_the_async_renewal_of_an_offline_hold_renews_it_there(tmp_path) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(
        dead, prefix=f"rv-{uuid.uuid4().hex[:8]}", clock=clock, spool_path=tmp_path / "s.jsonl"
    )
    request = ReservationRequest("offline-1", (ScopeLimits("t", daily_nanos=10**9),), 10, 5, TTL)
    held = store.reserve_offline(request)
    clock.advance(TTL / 2)
    renewed = asyncio.run(store.aextend(held, TTL))
    assert renewed is not None and renewed.expires_at == clock() + TTL
    clock.advance(TTL - 1)  # past the first expiry, within the renewed one
    assert store.recovery.offline.usage("t").reserved_usd > 0
    store.close()
