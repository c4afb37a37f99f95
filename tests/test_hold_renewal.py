"""A stream still running keeps its hold: half a TTL before it would expire, the next chunk
renews it (the store's ``extend``), so a long stream cannot lose its room to other calls
while it runs (a hold expires by itself only so that a crashed process gives its room
back). Every gap between chunks shorter than the TTL keeps the hold; the SDKs' read
timeout (600 s by default) is shorter than the default TTL (900 s)."""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, ManualClock, MemoryStore, Policy
from guardrail.testing import FakeOpenAIServer
from tests._redis_helpers import KINDS, cleanup, make_store

MODEL = "gpt-4o"
MSG = [{"role": "user", "content": "Write a long essay."}]
LONG = "lorem ipsum dolor sit amet " * 60


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(reply=LONG) as fake:
        yield fake


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    made = make_store(
        str(request.param), ManualClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC)), tmp_path
    )
    try:
        yield made
    finally:
        cleanup(made)


def _guard(store: Any) -> tuple[Guard, Decimal]:
    one = guardrail.estimate_cost(MODEL, guardrail.count_messages(MSG, MODEL), 100)
    policy = Policy(
        daily_spend_usd=one * Decimal("1.5"), reservation_ttl_seconds=60, loop_limit=None
    )
    return Guard(policy, store=store), one


def test_a_long_stream_keeps_its_hold(server: Any, store: Any) -> None:
    guard, one = _guard(store)
    clock = store._clock
    client = guard.wrap(
        openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
    )
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100, stream=True)
    chunks = iter(stream)
    for _ in range(5):  # 200 s of a stream whose hold lives 60 s, a chunk every 40 s
        next(chunks)
        clock.advance(40)
        assert guard.usage("default").reserved_usd == one
        with pytest.raises(BudgetExceeded):  # its room is still held
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100)
    for _ in chunks:
        pass
    usage = guard.usage("default")
    assert usage.reserved_usd == 0 and 0 < usage.spent_usd <= one


def test_an_async_stream_keeps_its_hold(server: Any, store: Any) -> None:
    guard, one = _guard(store)
    clock = store._clock
    client = guard.wrap(
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
    )

    async def run() -> None:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=100, stream=True
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen <= 4:
                clock.advance(40)
                assert (await guard.ausage("default")).reserved_usd == one
        assert seen > 4

    asyncio.run(run())
    assert guard.usage("default").reserved_usd == 0


def test_without_chunks_the_hold_still_expires(server: Any, store: Any) -> None:
    # Renewal rides on the chunks: a stream silent for a whole TTL (a read timeout longer
    # than the TTL) loses its hold, as before, and its late settlement is charged in full.
    guard, one = _guard(store)
    clock = store._clock
    client = guard.wrap(
        openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
    )
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100, stream=True)
    chunks = iter(stream)
    next(chunks)
    clock.advance(61)
    assert guard.usage("default").reserved_usd == 0
    for _ in chunks:
        pass
    assert guard.usage("default").spent_usd > 0


class _SlowExtend(MemoryStore):
    """A store whose renewal awaits (a Redis round trip), so a cancellation can land in it."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.async_writes_never_suspend = False
        self.extending = asyncio.Event()

    async def aextend(self, reservation: Any, ttl_seconds: float) -> Any:
        self.extending.set()
        await asyncio.Event().wait()  # until cancelled
        return self.extend(reservation, ttl_seconds)  # pragma: no cover


def test_a_cancellation_during_a_renewal_still_settles(server: Any) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    store = _SlowExtend(clock)
    guard, _ = _guard(store)
    client = guard.wrap(
        openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
    )

    async def consume() -> None:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=100, stream=True
        )
        async for _ in stream:
            clock.advance(40)  # the next chunk renews the hold

    async def main() -> None:
        task = asyncio.create_task(consume())
        await store.extending.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    usage = guard.usage("default")
    assert usage.reserved_usd == 0 and usage.spent_usd > 0


def test_wrapping_a_client_that_waits_longer_than_a_hold_lives_warns() -> None:
    # A plain request has no chunks to renew its hold on: a read timeout at or past the TTL
    # lets it lose the hold while it waits.
    guard = Guard(Policy(reservation_ttl_seconds=900))
    with pytest.warns(UserWarning, match="reservation_ttl_seconds"):
        guard.wrap(openai.OpenAI(api_key="t", timeout=3600))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard.wrap(openai.OpenAI(api_key="t"))  # the SDK's 600 s: no warning
        Guard(Policy(reservation_ttl_seconds=7200)).wrap(openai.OpenAI(api_key="t", timeout=3600))
