"""llama-index-llms-openai on guarded clients: ``OpenAI`` (Chat Completions) and
``OpenAIResponses``, sync, async and streaming, the cap, the SDK's errors, and its own
retries (``max_retries``, 3 by default) on top of the guard's attempts."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI, OpenAIResponses

from guardrail import BudgetExceeded, LoopDetected, Policy
from guardrail.testing import FakeOpenAIServer
from tests_frameworks._rig import MODEL, Rig, make_rig

LLMS = {"chat": OpenAI, "responses": OpenAIResponses}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}
HI = [ChatMessage(role="user", content="Say hi")]


def llm(rig: Rig, api: str = "chat", **kw: Any) -> Any:
    """The LLM on the guarded clients (it builds its own unguarded ones without them)."""
    return LLMS[api](model=MODEL, openai_client=rig.client, async_openai_client=rig.aclient, **kw)


@pytest.mark.parametrize("api", LLMS)
def test_chat_and_complete_are_guarded(rig: Rig, api: str) -> None:
    rig.server.reply = "Hi!"
    model = llm(rig, api)
    assert model.chat(HI).message.content == "Hi!"
    assert model.complete("Say hi").text == "Hi!"
    assert [r.path for r in rig.server.requests] == [PATHS[api]] * 2
    rig.settled(2)


@pytest.mark.parametrize("api", LLMS)
async def test_async_streams_are_settled(rig: Rig, api: str) -> None:
    rig.server.reply = "Hello there, friend."
    deltas = [chunk.delta async for chunk in await llm(rig, api).astream_chat(HI)]
    assert "".join(d or "" for d in deltas) == "Hello there, friend."
    assert [r.json.get("stream") for r in rig.server.requests] == [True]
    assert [r.outcome for r in rig.records] == ["stream_completed"]
    rig.settled(1)


@pytest.mark.parametrize("api", LLMS)
def test_a_tiny_cap_refuses_before_anything_is_sent(capped: Rig, api: str) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        llm(capped, api).chat(HI)
    assert refused.value.limit == "daily_spend_usd"
    assert capped.server.requests == [] and capped.spent == 0


@pytest.mark.parametrize("api", LLMS)
def test_a_400_is_the_sdks_error(rig: Rig, api: str) -> None:
    rig.server.enqueue_error(400, message="bad request", param="messages")
    with pytest.raises(openai.BadRequestError, match="bad request"):
        llm(rig, api).chat(HI)
    assert len(rig.server.requests) == 1
    assert rig.guard.usage("default").reserved_usd == 0


def failing(server: FakeOpenAIServer, policy: Policy) -> Rig:
    for _ in range(30):
        server.enqueue_error(429, retry_after=0)  # llama-index waits what retry-after says
    return make_rig(server, policy, sleep=lambda seconds: None)


def test_its_retries_multiply_the_guards_attempts(server: FakeOpenAIServer) -> None:
    """llama-index's max_retries=3 runs the guarded call 3 times, each with the guard's 2
    attempts: 6 sends, every one reserved and its reservation returned, then the SDK's
    error. ``max_retries=0`` leaves the guard's attempts alone (below)."""
    rig = failing(server, Policy(daily_spend_usd=1, max_attempts=2, loop_limit=None))
    with pytest.raises(openai.RateLimitError):
        llm(rig, max_retries=3).chat(HI)
    assert len(server.requests) == 3 * 2
    assert [(r.outcome, r.attempts) for r in rig.records] == [("error", 2)] * 3
    assert rig.guard.usage("default").reserved_usd == 0 and rig.spent == 0


def test_with_max_retries_0_the_guard_alone_bounds_the_sends(server: FakeOpenAIServer) -> None:
    rig = failing(server, Policy(daily_spend_usd=1, max_attempts=3))
    with pytest.raises(openai.RateLimitError):
        llm(rig, max_retries=0).chat(HI)
    assert len(server.requests) == 3 and [r.attempts for r in rig.records] == [3]


def test_the_loop_check_stops_retries_stacked_on_the_guard(server: FakeOpenAIServer) -> None:
    """Whatever the framework retries, the same request failing loop_limit times is
    refused before it is sent again: LoopDetected, which no framework retries."""
    rig = failing(server, Policy(daily_spend_usd=1, max_attempts=3, loop_limit=4))
    with pytest.raises(LoopDetected):
        llm(rig, max_retries=10).chat(HI)
    assert len(server.requests) == 4
    assert rig.guard.usage("default").reserved_usd == 0
