"""What a loop is (item 5): the same whole request sent and failing again and again for one
tenant. Successful repeats (sampling, evals) and calls never sent (budget refusals) do not
count; the count lives in the store, so every process sharing a Redis sees it; it is
bounded in memory; LoopDetected says when to retry. Real SDK, loopback fake server."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, LoopDetected, ManualClock, MemoryStore, Policy
from guardrail.stores import memory
from guardrail.stores.base import LoopRule, ReservationRequest, ScopeLimits, Settlement
from tests._redis_helpers import KINDS, START_TS, cleanup, make_store

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]


def client_for(server: Any, policy: Policy, store: Any = None, clock: Any = None) -> Any:
    guard = Guard(policy, store=store, clock=clock)
    raw = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    return guard.wrap(raw).for_tenant("looper")


def failing(client: Any, n: int, messages: Any = HELLO) -> None:
    for _ in range(n):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)


def test_a_request_failing_again_and_again_is_refused_until_its_window_passes(
    server, clock
) -> None:
    policy = Policy(loop_limit=3, loop_window_seconds=60, max_attempts=1)
    client = client_for(server, policy, clock=clock)
    for _ in range(3):
        server.enqueue_error(500)
    failing(client, 3)
    clock.advance(10)
    with pytest.raises(LoopDetected) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    assert info.value.tenant == "looper" and info.value.limit == 3 and info.value.repeats == 3
    assert info.value.retry_after == pytest.approx(50)
    assert len(server.chat_requests) == 3  # the refused call was not sent
    other = [{"role": "user", "content": "Something else"}]
    client.chat.completions.create(model=MODEL, messages=other, max_tokens=5)  # not the same
    clock.advance(50)
    server.enqueue_error(500)
    failing(client, 1)  # the window passed: sent again (and it fails: a new run begins)


def test_sampling_one_prompt_many_times_is_never_a_loop(server) -> None:
    client = client_for(server, Policy(loop_limit=3))
    for _ in range(30):
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=1, max_tokens=5)
    assert len(server.chat_requests) == 30


def test_a_success_clears_the_failures(server) -> None:
    client = client_for(server, Policy(loop_limit=3, max_attempts=1))
    for _ in range(2):
        server.enqueue_error(500)
    failing(client, 2)
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    for _ in range(2):
        server.enqueue_error(500)
    failing(client, 2)  # two more failures: the count started again
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)


def test_budget_refusals_do_not_count(server) -> None:
    cap = guardrail.estimate_cost(MODEL, guardrail.count_messages(HELLO, MODEL), 5) / 2
    client = client_for(server, Policy(loop_limit=3, daily_spend_usd=cap))
    for _ in range(25):
        with pytest.raises(BudgetExceeded):  # never LoopDetected, which has no reset time
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    assert server.chat_requests == []


def test_conversations_that_end_alike_are_different_requests(server) -> None:
    client = client_for(server, Policy(loop_limit=2, max_attempts=1))
    for n in range(6):
        server.enqueue_error(500)
        history = [
            {"role": "user", "content": f"Question {n}?"},
            {"role": "assistant", "content": "Maybe."},
        ]
        failing(client, 1, [*history, {"role": "user", "content": "Yes."}])
    assert len(server.chat_requests) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_the_count_is_shared_through_the_store(server, tmp_path: Path, kind: str) -> None:
    """Two guards on one store (two workers): failures of one count for the other."""
    clock = ManualClock(START_TS)
    store = make_store(kind, clock, tmp_path)
    try:
        policy = Policy(loop_limit=3, max_attempts=1)
        first, second = client_for(server, policy, store), client_for(server, policy, store)
        for _ in range(3):
            server.enqueue_error(500)
        failing(first, 2)
        failing(second, 1)
        for client in (first, second):
            with pytest.raises(LoopDetected):
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
        assert len(server.chat_requests) == 3
    finally:
        cleanup(store)


def test_failing_requests_are_remembered_in_bounded_memory(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_MAX_LOOPS", 100)
    clock = ManualClock(START_TS)
    store = MemoryStore(clock=clock)
    scope = (ScopeLimits("t"),)
    for n in range(1_000):  # a thousand different requests, each failing once
        request = ReservationRequest(f"r{n}", scope, 1, 1, 60, "m", LoopRule(f"k{n}", 3, 60))
        store.settle(store.reserve(request), Settlement(1, 1, 0, "m", failed=True))
    assert len(store._s.loops) <= 100
    assert store.usage("t").spent_usd == Decimal(1000) / 10**9
