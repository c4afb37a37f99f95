"""The guarded client's budget behaviours on every store: memory, fakeredis, real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, Policy
from tests._redis_helpers import KINDS, cleanup, make_store

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, clock: Any, tmp_path: Path) -> Iterator[Any]:
    made = make_store(request.param, clock, tmp_path)
    try:
        yield made
    finally:
        if request.param != "memory":
            cleanup(made)


def worst_case(output: int, model: str = MODEL) -> Any:
    return guardrail.estimate_cost(model, guardrail.count_messages(HELLO, model), output)


def guarded(server: Any, store: Any, policy: Policy, **kw: Any) -> tuple[Guard, Any]:
    guard = Guard(policy, store=store, **kw)
    return guard, guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))


def test_scopes_are_charged_together(server, store) -> None:
    server.reply = "word " * 300  # every call uses all 100 of its output tokens
    cost = worst_case(100)
    guard, client = guarded(
        server,
        store,
        Policy(loop_limit=None),
        tenant_policies={"org-7": Policy(daily_spend_usd=cost * 2)},
        global_policy=Policy(daily_spend_usd=cost * 100),
    )
    for user in ("u1", "u2"):
        client.for_tenant(user, ["org-7"]).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )
    with pytest.raises(BudgetExceeded) as info:
        client.for_tenant("u1", ["org-7"]).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )
    assert info.value.tenant == "org-7" and len(server.chat_requests) == 2
    assert guard.usage("org-7").requests == 2 == store.usage("_global").requests
    assert guard.usage("u1").reserved_usd == 0


def test_cheaper_fallback_when_the_budget_refuses(server, store) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = guarded(
        server,
        store,
        Policy(daily_spend_usd=worst_case(100) / 2, fallback_models=("gpt-4o-mini",)),
        sinks=[records.append],
    )
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    assert server.chat_requests[-1].json["model"] == "gpt-4o-mini"
    assert records[-1].model == "gpt-4o-mini" and guard.usage("default").requests == 1


def test_day_rollover_and_timeouts_on_the_store(server, store, clock, sleeps) -> None:
    cost = worst_case(100)
    guard, client = guarded(server, store, Policy(daily_spend_usd=cost, loop_limit=None))
    user = client.for_tenant("erin")
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    with pytest.raises(BudgetExceeded):
        user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    clock.advance(12 * 3600)  # midnight UTC
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    assert guard.usage("erin").requests == 1
    # A timeout after sending is charged the prompt, never $0, on every store.
    server.enqueue_delay(2)
    slow = Guard(Policy(max_attempts=1, loop_limit=None), store=store, sleep=sleeps.append)
    slow_client = slow.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", timeout=0.2))
    with pytest.raises(openai.APITimeoutError):
        slow_client.for_tenant("slow").chat.completions.create(model=MODEL, messages=HELLO)
    assert slow.usage("slow").spent_usd > 0 and slow.usage("slow").reserved_usd == 0


async def test_async_calls_on_the_store(server, store) -> None:
    guard = Guard(Policy(daily_spend_usd=worst_case(50) * 3, loop_limit=None), store=store)
    client = guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="t"))
    server.reply = "word " * 300
    for _ in range(3):
        await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
    with pytest.raises(BudgetExceeded):
        await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
    usage = await guard.ausage("default")
    assert usage.requests == 3 and usage.reserved_usd == 0
    close = getattr(store, "aclose", None)
    if close is not None:
        await close()


def test_max_in_flight_refuses_a_call_while_others_are_open(server, store) -> None:
    """Two streams open at once fill max_in_flight=2: a third call is refused before it is
    sent; closing a stream gives its slot back."""
    guard, client = guarded(server, store, Policy(max_in_flight=2, loop_limit=None))
    user = client.for_tenant("streamer")
    first = user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, stream=True)
    second = user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, stream=True)
    with pytest.raises(BudgetExceeded) as info:
        user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20)
    assert info.value.limit == "max_in_flight" and info.value.cap == 2
    assert "2 in flight" in str(info.value) and len(server.chat_requests) == 2
    list(first)  # read to the end: settled
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20)
    second.close()  # closed early: settled from what was read
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20)
    assert guard.usage("streamer").requests == 4 and guard.usage("streamer").reserved_usd == 0
