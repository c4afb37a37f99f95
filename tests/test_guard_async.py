"""AsyncOpenAI through the same engine: the same decisions as the sync client."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, Policy

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]


def make(server: Any, policy: Policy, **kw: Any) -> tuple[Guard, Any]:
    guard = Guard(policy, **kw)
    return guard, guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="t"))


async def sleep_nothing(seconds: float) -> None:
    return None


async def test_async_rejection_sends_nothing(server) -> None:
    guard, client = make(server, Policy(daily_spend_usd=0))
    with pytest.raises(BudgetExceeded):
        await client.chat.completions.create(model=MODEL, messages=HELLO)
    assert server.chat_requests == []


async def test_async_retries_and_settles(server) -> None:
    server.enqueue_error(429)
    server.enqueue_error(503)
    guard, client = make(server, Policy(max_attempts=3), async_sleep=sleep_nothing)
    out = await client.for_tenant("a").chat.completions.create(model=MODEL, messages=HELLO)
    assert out.choices and len(server.chat_requests) == 3
    assert guard.usage("a").requests == 1
    assert await guard.ausage("a") == guard.usage("a")


async def test_async_tasks_never_overspend(server) -> None:
    server.reply = "word " * 300
    cost = guardrail.estimate_cost(MODEL, guardrail.count_messages(HELLO, MODEL), 50)
    guard, client = make(server, Policy(daily_spend_usd=cost * 7, loop_limit=None))
    user = client.for_tenant("many")

    async def one() -> bool:
        try:
            await user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
            return True
        except BudgetExceeded:
            return False

    results = await asyncio.gather(*(one() for _ in range(30)))
    assert sum(results) == 7 == len(server.chat_requests)
    assert guard.usage("many").spent_usd <= cost * 7
    assert guard.usage("many").reserved_usd == 0


async def test_async_raw_response(server) -> None:
    guard, client = make(server, Policy())
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.parse().choices  # the legacy raw response parses synchronously
    assert guard.usage("default").requests == 1


def test_timeouts_are_retried(server, sleeps) -> None:
    server.enqueue_delay(2)
    guard = Guard(Policy(max_attempts=2), sleep=sleeps.append)
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", timeout=0.3))
    out = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert out.choices and len(sleeps) == 1 and len(server.chat_requests) == 2
