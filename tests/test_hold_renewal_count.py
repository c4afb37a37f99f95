"""A call keeps its hold while the provider counts its prompt (Anthropic's exact count,
``messages.count_tokens``, between the reservation and the request): a count may take as
long as its timeout, longer than a short ``reservation_ttl_seconds``, and a hold lost then
would let other calls of the tenant spend its room. The real SDK over loopback against
guardrail.testing's fake, with the count held at the HTTP transport until the test lets
it go; time is the store's (a ManualClock), and the keeper's due renewals are run by the
test (as in tests/test_hold_renewal.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, ManualClock, Policy
from guardrail.engine.keeper import async_keeper, sync_keeper
from guardrail.testing import FakeAnthropicServer
from tests._redis_helpers import KINDS, cleanup, make_store
from tests._sdk_http import http_library

httpx = http_library(anthropic)
MODEL = "claude-haiku-4-5"
MSG = [{"role": "user", "content": "Count me, slowly."}]
TTL = 20


class _CountGate:
    """Holds every count_tokens request until ``release``; ``arrived`` says one is held."""

    def __init__(self) -> None:
        self.arrived, self.released = threading.Event(), threading.Event()

    def release(self) -> None:
        self.released.set()

    def wait(self, request: Any) -> None:
        if request.url.path.endswith("/count_tokens"):
            self.arrived.set()
            assert self.released.wait(30), "the test never released the count"


class _SyncTransport(httpx.HTTPTransport):
    def __init__(self, gate: _CountGate) -> None:
        super().__init__()
        self.gate = gate

    def handle_request(self, request: Any) -> Any:
        self.gate.wait(request)
        return super().handle_request(request)


class _AsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, gate: _CountGate) -> None:
        super().__init__()
        self.gate = gate

    async def handle_async_request(self, request: Any) -> Any:
        if request.url.path.endswith("/count_tokens"):
            await asyncio.to_thread(self.gate.wait, request)
        return await super().handle_async_request(request)


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = make_store(
        str(request.param), ManualClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC)), tmp_path
    )
    try:
        yield made
    finally:
        cleanup(made)


def _guard(store: Any) -> tuple[Guard, Any, ManualClock, Decimal]:
    one = guardrail.estimate_cost(MODEL, 40, 100)
    policy = Policy(
        daily_spend_usd=one * Decimal("1.5"), reservation_ttl_seconds=TTL, loop_limit=None
    )
    return Guard(policy, store=store), store, store._clock, one


def _create(client: Any) -> Any:
    return client.messages.create(model=MODEL, max_tokens=100, messages=MSG)


def test_a_hold_is_kept_while_the_prompt_is_counted(fake: FakeAnthropicServer, store: Any) -> None:
    guard, store, clock, _ = _guard(store)
    gate = _CountGate()
    raw = anthropic.Anthropic(
        base_url=fake.base_url,
        api_key="t",
        max_retries=0,
        http_client=httpx.Client(transport=_SyncTransport(gate)),
    )
    client = guard.wrap(raw)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_create, client)
        try:
            assert gate.arrived.wait(30)
            assert sync_keeper().tracked(store) == 1
            held = guard.usage("default").reserved_usd
            for _ in range(3):  # 33 s: past the 20 s TTL
                clock.advance(11)
                sync_keeper().renew_due()
                assert guard.usage("default").reserved_usd == held > 0
                with pytest.raises(BudgetExceeded):  # its room is still held
                    _create(client)
        finally:
            gate.release()
        assert first.result(timeout=30).content
    assert guard.usage("default").reserved_usd == 0
    assert sync_keeper().tracked(store) == 0
    assert [r.path for r in fake.requests].count("/v1/messages/count_tokens") == 1


def test_an_async_hold_is_kept_while_the_prompt_is_counted(
    fake: FakeAnthropicServer, store: Any
) -> None:
    guard, store, clock, _ = _guard(store)
    gate = _CountGate()

    async def main() -> None:
        raw = anthropic.AsyncAnthropic(
            base_url=fake.base_url,
            api_key="t",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=_AsyncTransport(gate)),
        )
        client = guard.wrap(raw)
        first = asyncio.create_task(
            client.messages.create(model=MODEL, max_tokens=100, messages=MSG)
        )
        try:
            assert await asyncio.to_thread(gate.arrived.wait, 30)
            keeper = async_keeper()
            assert keeper.tracked(store) == 1
            held = guard.usage("default").reserved_usd
            for _ in range(3):
                clock.advance(11)
                await keeper.renew_due()
                assert guard.usage("default").reserved_usd == held > 0
        finally:
            gate.release()
        assert (await first).content
        assert keeper.tracked(store) == 0

    asyncio.run(main())
    assert guard.usage("default").reserved_usd == 0
