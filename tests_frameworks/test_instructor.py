"""instructor on guarded clients: ``from_openai``, sync and async, tools and JSON modes,
re-asks, the cap and the SDK's errors (instructor wraps both, keeping them as the cause)."""

from __future__ import annotations

import json
from typing import Any

import instructor
import openai
import pytest
from instructor.core.exceptions import InstructorRetryException
from pydantic import BaseModel

from guardrail import BudgetExceeded
from guardrail.testing import ToolCall
from tests_frameworks._rig import MODEL, Rig

MODES = [instructor.Mode.TOOLS, instructor.Mode.JSON]
ASK = [{"role": "user", "content": "Oslo's population?"}]
OSLO = {"name": "Oslo", "population": 700000}


class City(BaseModel):
    name: str
    population: int


def answer(request: dict[str, Any]) -> Any:
    """A tool call when instructor sends its schema as a tool, else JSON text."""
    if request.get("tools"):
        return [ToolCall(request["tools"][0]["function"]["name"], OSLO)]
    return json.dumps(OSLO)


@pytest.mark.parametrize("mode", MODES)
def test_sync_structured_output_is_guarded(rig: Rig, mode: instructor.Mode) -> None:
    rig.server.reply = answer
    client = instructor.from_openai(rig.client, mode=mode)
    city = client.chat.completions.create(model=MODEL, response_model=City, messages=ASK)
    assert city.model_dump() == OSLO
    sent = rig.server.requests[0].json
    assert ("tools" in sent) == (mode is instructor.Mode.TOOLS)
    rig.settled(1)


@pytest.mark.parametrize("mode", MODES)
async def test_async_structured_output_is_guarded(rig: Rig, mode: instructor.Mode) -> None:
    rig.server.reply = answer
    client = instructor.from_openai(rig.aclient, mode=mode)
    city = await client.chat.completions.create(model=MODEL, response_model=City, messages=ASK)
    assert city.model_dump() == OSLO
    rig.settled(1)


def test_every_re_ask_is_a_guarded_call(rig: Rig) -> None:
    """A reply that fails validation is asked again (instructor's max_retries): each
    attempt is a paid call, reserved and settled on its own."""
    replies = iter(['{"name": "Oslo"}', json.dumps(OSLO)])
    rig.server.reply = lambda request: next(replies)
    client = instructor.from_openai(rig.client, mode=instructor.Mode.JSON)
    city = client.chat.completions.create(
        model=MODEL, response_model=City, messages=ASK, max_retries=2
    )
    assert city.model_dump() == OSLO and len(rig.server.requests) == 2
    rig.settled(2)


@pytest.mark.parametrize("mode", MODES)
async def test_a_tiny_cap_refuses_before_anything_is_sent(
    capped: Rig, mode: instructor.Mode
) -> None:
    client = instructor.from_openai(capped.aclient, mode=mode)
    with pytest.raises(InstructorRetryException) as failed:
        await client.chat.completions.create(model=MODEL, response_model=City, messages=ASK)
    assert isinstance(failed.value.__cause__, BudgetExceeded)
    assert failed.value.n_attempts == 1
    assert capped.server.requests == [] and capped.spent == 0


def test_a_400_is_the_sdks_error_under_instructors(rig: Rig) -> None:
    rig.server.enqueue_error(400, message="bad schema", param="tools")
    client = instructor.from_openai(rig.client, mode=instructor.Mode.TOOLS)
    with pytest.raises(InstructorRetryException) as failed:
        client.chat.completions.create(
            model=MODEL, response_model=City, messages=ASK, max_retries=3
        )
    assert isinstance(failed.value.__cause__, openai.BadRequestError)
    assert len(rig.server.requests) == 1  # neither instructor nor the guard retries a 400
    assert rig.guard.usage("default").reserved_usd == 0
