"""langchain-openai's ChatOpenAI on guarded clients: Chat Completions and
``use_responses_api=True``, tools, ``with_structured_output().stream()``, async, the cap,
the SDK's errors, and ``with_retry`` on top of the guard's attempts."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from guardrail import BudgetExceeded, Policy
from guardrail.testing import FakeOpenAIServer, ToolCall
from tests_frameworks._rig import MODEL, Rig, make_rig

APIS = {"chat": False, "responses": True}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}


class City(BaseModel):
    name: str
    population: int


def chat_openai(rig: Rig, api: str = "chat", **kw: Any) -> ChatOpenAI:
    """ChatOpenAI on the guarded clients: all four, or it builds unguarded ones of its own
    for what is missing (``root_client`` carries Responses and structured streams)."""
    return ChatOpenAI(
        model=MODEL,
        use_responses_api=APIS[api],
        root_client=rig.client,
        client=rig.client.chat.completions,
        root_async_client=rig.aclient,
        async_client=rig.aclient.chat.completions,
        **kw,
    )


@pytest.mark.parametrize("api", APIS)
def test_invoke_is_guarded_and_settled(rig: Rig, api: str) -> None:
    rig.server.reply = "Hi!"
    message = chat_openai(rig, api).invoke("Say hi")
    assert message.text == "Hi!"
    assert [r.path for r in rig.server.requests] == [PATHS[api]]
    rig.settled(1)
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == rig.records[0].input_tokens


@pytest.mark.parametrize("api", APIS)
async def test_async_tool_calls_are_guarded(rig: Rig, api: str) -> None:
    rig.server.reply = [ToolCall("lookup", {"city": "Oslo"})]

    def lookup(city: str) -> str:
        """Look a city up."""
        return city

    message = await chat_openai(rig, api).bind_tools([lookup]).ainvoke("Find Oslo")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("lookup", {"city": "Oslo"})]
    assert "tools" in rig.server.requests[0].json
    rig.settled(1)


# ChatOpenAI on a plain SDK client warns the same (the SDK's `parsed` field), guarded or not.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("api", APIS)
def test_structured_output_streams_are_settled(rig: Rig, api: str) -> None:
    rig.server.reply = '{"name": "Oslo", "population": 700000}'
    chunks = list(chat_openai(rig, api).with_structured_output(City).stream("Which city?"))
    assert chunks[-1] == City(name="Oslo", population=700000)
    assert [r.json.get("stream") for r in rig.server.requests] == [True]
    assert [r.outcome for r in rig.records] == ["stream_completed"]
    rig.settled(1)


@pytest.mark.parametrize("api", APIS)
def test_a_tiny_cap_refuses_before_anything_is_sent(capped: Rig, api: str) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        chat_openai(capped, api).invoke("Say hi")
    assert refused.value.limit == "daily_spend_usd"
    assert capped.server.requests == [] and capped.spent == 0


@pytest.mark.parametrize("api", APIS)
def test_a_400_is_the_sdks_error(rig: Rig, api: str) -> None:
    rig.server.enqueue_error(400, message="bad request", param="messages")
    with pytest.raises(openai.BadRequestError, match="bad request"):
        chat_openai(rig, api, max_retries=5).invoke("Say hi")
    assert len(rig.server.requests) == 1
    assert rig.guard.usage("default").reserved_usd == 0


def test_max_retries_does_not_stack_and_with_retry_multiplies(server: FakeOpenAIServer) -> None:
    """ChatOpenAI(max_retries=5) is the SDK's retries, which a guarded call never uses;
    ``with_retry(stop_after_attempt=2)`` calls the guarded client twice: 2 x the guard's
    3 attempts, each reserved and returned, then the SDK's error."""
    rig = make_rig(server, Policy(daily_spend_usd=1, max_attempts=3), sleep=lambda s: None)
    for _ in range(20):
        server.enqueue_error(503)
    llm = chat_openai(rig, max_retries=5).with_retry(
        stop_after_attempt=2, wait_exponential_jitter=False
    )
    with pytest.raises(openai.InternalServerError):
        llm.invoke("Say hi")
    assert len(server.requests) == 2 * 3
    assert [(r.outcome, r.attempts) for r in rig.records] == [("error", 3)] * 2
    assert rig.guard.usage("default").reserved_usd == 0 and rig.spent == 0


def test_a_dropped_connection_loop_is_billed_and_seen(server: FakeOpenAIServer) -> None:
    """Connections dropped after the request left (what a timeout is to the bill): every
    send, the guard's attempts times with_retry's, is settled at its prompt's cost, so a
    framework's retries cannot spend unseen."""
    rig = make_rig(
        server, Policy(daily_spend_usd=1, max_attempts=2, loop_limit=None), sleep=lambda s: None
    )
    for _ in range(10):
        server.enqueue_disconnect()
    llm = chat_openai(rig).with_retry(stop_after_attempt=2, wait_exponential_jitter=False)
    with pytest.raises(openai.APIConnectionError):
        llm.invoke("Say hi")
    assert len(server.requests) == 2 * 2
    # One record per send, settled at its prompt's cost, and one per call that failed.
    sends = [r for r in rig.records if r.settlement == "settled"]
    assert [r.attempts for r in sends] == [1, 2] * 2 and all(r.cost_usd > 0 for r in sends)
    assert [r.attempts for r in rig.records if r.settlement == "none"] == [2, 2]
    usage = rig.guard.usage("default")
    assert usage.reserved_usd == 0 and usage.spent_usd == sum(r.cost_usd for r in sends) > 0
