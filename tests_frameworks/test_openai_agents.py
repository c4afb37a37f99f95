"""openai-agents on a guarded AsyncOpenAI: its default Responses model and its Chat
Completions model, a tool loop, streaming, the cap, errors and its own retries."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIProvider,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.retry import ModelRetrySettings, retry_policies

from guardrail import BudgetExceeded, Policy
from guardrail.testing import FakeOpenAIServer, ToolCall
from tests_frameworks._rig import MODEL, Rig, make_rig

set_tracing_disabled(True)

added: list[tuple[int, int]] = []


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    added.append((a, b))
    return a + b


def tool_loop(request: dict[str, Any]) -> Any:
    """Call ``add`` first; answer once its output (either API's form) is in the prompt."""
    items = request.get("input") or request.get("messages") or []
    answered = any(
        isinstance(i, dict) and (i.get("type") == "function_call_output" or i.get("role") == "tool")
        for i in items
    )
    return "1 + 2 = 3" if answered else [ToolCall("add", {"a": 1, "b": 2})]


def default_model(rig: Rig) -> RunConfig:
    """The SDK's default model (Responses) from a provider holding the guarded client."""
    return RunConfig(model_provider=OpenAIProvider(openai_client=rig.aclient))


def chat_agent(rig: Rig, **kw: Any) -> Agent:
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=rig.aclient)
    return Agent(name="calc", instructions="Be brief.", tools=[add], model=model, **kw)


@pytest.fixture(autouse=True)
def _fresh_tool() -> None:
    added.clear()


async def test_the_default_responses_model_runs_a_tool_loop(rig: Rig) -> None:
    rig.server.reply = tool_loop
    agent = Agent(name="calc", instructions="Be brief.", tools=[add], model=MODEL)
    result = await Runner.run(agent, "add 1 and 2", run_config=default_model(rig))
    assert result.final_output == "1 + 2 = 3" and added == [(1, 2)]
    assert [r.path for r in rig.server.requests] == ["/v1/responses"] * 2
    rig.settled(2)
    # The SDK's own usage agrees with the guard's records.
    assert result.context_wrapper.usage.input_tokens == sum(r.input_tokens for r in rig.records)


async def test_the_chat_completions_model_runs_a_tool_loop(rig: Rig) -> None:
    rig.server.reply = tool_loop
    result = await Runner.run(chat_agent(rig), "add 1 and 2")
    assert result.final_output == "1 + 2 = 3" and added == [(1, 2)]
    assert [r.path for r in rig.server.requests] == ["/v1/chat/completions"] * 2
    rig.settled(2)


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_streamed_runs_are_settled(rig: Rig, api: str) -> None:
    rig.server.reply = tool_loop
    if api == "chat":
        result = Runner.run_streamed(chat_agent(rig), "add 1 and 2")
    else:
        agent = Agent(name="calc", tools=[add], model=MODEL)
        result = Runner.run_streamed(agent, "add 1 and 2", run_config=default_model(rig))
    deltas = [e async for e in result.stream_events() if e.type == "raw_response_event"]
    assert result.final_output == "1 + 2 = 3" and deltas
    assert all(r.json["stream"] is True for r in rig.server.requests)
    assert [r.outcome for r in rig.records] == ["stream_completed"] * 2
    rig.settled(2)


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_tiny_cap_refuses_before_anything_is_sent(capped: Rig, api: str) -> None:
    agent = chat_agent(capped) if api == "chat" else Agent(name="calc", model=MODEL)
    with pytest.raises(BudgetExceeded) as refused:
        await Runner.run(agent, "add 1 and 2", run_config=default_model(capped))
    assert refused.value.limit == "daily_spend_usd" and refused.value.tenant == "default"
    assert capped.server.requests == []
    assert [(r.outcome, r.refusal and r.refusal.kind) for r in capped.records] == [
        ("rejected", "budget")
    ]
    assert capped.spent == 0


async def test_a_400_reaches_the_agent_as_the_sdks_error(rig: Rig) -> None:
    rig.server.enqueue_error(400, message="bad tool schema", param="tools")
    with pytest.raises(openai.BadRequestError, match="bad tool schema"):
        await Runner.run(chat_agent(rig), "add 1 and 2")
    assert len(rig.server.requests) == 1  # a 400 is never retried
    assert rig.guard.usage("default").reserved_usd == 0 and rig.spent == 0


async def test_runner_retries_and_the_guards_multiply_and_stop(server: FakeOpenAIServer) -> None:
    """ModelSettings.retry (runner-managed) calls the guarded client again; each of its
    attempts is one guarded call with the guard's own attempts: 3 x 2 sends, then the
    SDK's error. Every send was reserved and its reservation returned."""

    async def no_wait(seconds: float) -> None:
        return None

    rig = make_rig(server, Policy(daily_spend_usd=1, max_attempts=2), async_sleep=no_wait)
    for _ in range(20):
        server.enqueue_error(500)
    retry = ModelRetrySettings(
        max_retries=2,
        backoff={"initial_delay": 0, "max_delay": 0, "jitter": False},
        policy=retry_policies.http_status([500]),
    )
    agent = chat_agent(rig, model_settings=ModelSettings(retry=retry))
    with pytest.raises(openai.InternalServerError):
        await Runner.run(agent, "add 1 and 2")
    assert len(server.requests) == 3 * 2
    assert [(r.outcome, r.attempts) for r in rig.records] == [("error", 2)] * 3
    assert rig.guard.usage("default").reserved_usd == 0 and rig.spent == 0
