"""pydantic-ai on a guarded AsyncOpenAI: OpenAIResponsesModel and OpenAIChatModel, a tool
loop, structured output, streaming, the cap, and its own HTTP error."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from guardrail import BudgetExceeded
from guardrail.testing import ToolCall
from tests_frameworks._rig import MODEL, Rig

MODELS = {"responses": OpenAIResponsesModel, "chat": OpenAIChatModel}


class City(BaseModel):
    name: str
    population: int


def model(rig: Rig, api: str) -> Any:
    return MODELS[api](MODEL, provider=OpenAIProvider(openai_client=rig.aclient))


def tool_loop(request: dict[str, Any]) -> Any:
    items = request.get("input") or request.get("messages") or []
    answered = any(
        isinstance(i, dict) and (i.get("type") == "function_call_output" or i.get("role") == "tool")
        for i in items
    )
    return "It is 21 degrees." if answered else [ToolCall("temperature", {"city": "Oslo"})]


@pytest.mark.parametrize("api", MODELS)
def test_a_tool_loop_runs_and_every_call_is_settled(rig: Rig, api: str) -> None:
    rig.server.reply = tool_loop
    agent = Agent(model(rig, api), instructions="Be brief.")
    asked: list[str] = []

    @agent.tool_plain
    def temperature(city: str) -> int:
        """The temperature in a city."""
        asked.append(city)
        return 21

    result = agent.run_sync("How warm is Oslo?")
    assert result.output == "It is 21 degrees." and asked == ["Oslo"]
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert [r.path for r in rig.server.requests] == [path] * 2
    rig.settled(2)
    assert result.usage.input_tokens == sum(r.input_tokens for r in rig.records)


@pytest.mark.parametrize("api", MODELS)
async def test_structured_output_streams_and_is_settled(rig: Rig, api: str) -> None:
    rig.server.reply = '{"name": "Oslo", "population": 700000}'
    agent = Agent(model(rig, api), output_type=City)
    async with agent.run_stream("Which city?") as run:
        partials = [p async for p in run.stream_output()]
    assert partials[-1] == City(name="Oslo", population=700000)
    assert all(r.json["stream"] is True for r in rig.server.requests)
    assert [r.outcome for r in rig.records] == ["stream_completed"]
    rig.settled(1)


@pytest.mark.parametrize("api", MODELS)
def test_a_tiny_cap_refuses_before_anything_is_sent(capped: Rig, api: str) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        Agent(model(capped, api)).run_sync("hello")
    assert refused.value.limit == "daily_spend_usd"
    assert capped.server.requests == [] and capped.spent == 0
    assert [r.outcome for r in capped.records] == ["rejected"]


@pytest.mark.parametrize("api", MODELS)
def test_a_400_is_pydantic_ais_http_error(rig: Rig, api: str) -> None:
    rig.server.enqueue_error(400, message="unsupported parameter", param="temperature")
    with pytest.raises(ModelHTTPError) as failed:
        Agent(model(rig, api)).run_sync("hello")
    assert failed.value.status_code == 400 and "unsupported parameter" in str(failed.value.body)
    assert len(rig.server.requests) == 1
    assert rig.guard.usage("default").reserved_usd == 0 and rig.spent == 0
