"""A guarded stream taken as a raw response and read as bytes (``iter_lines()``,
``read()``: what a proxy relaying the SSE does) goes past the guard unread: it is settled
at the prompt and the whole reserved output when the response is closed or dropped, never
left held until its reservation expires (which recorded nothing)."""

from __future__ import annotations

import asyncio
import gc

import anthropic
import openai
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import FakeAnthropicServer, FakeOpenAIServer

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def oai():
    with FakeOpenAIServer() as server:
        yield server


def _guard() -> tuple[Guard, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    return Guard(Policy(daily_spend_usd=1, loop_limit=None), sinks=[records.append]), records


def test_chat_stream_read_as_lines_is_settled_at_the_reserved_output(oai) -> None:
    guard, records = _guard()
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HELLO, stream=True, max_completion_tokens=100
    ) as response:
        assert sum(1 for line in response.iter_lines() if line.startswith("data:")) > 1
    (record,) = records
    assert record.output_tokens == 100 and record.usage_source == "local_count"
    assert record.input_tokens > 0
    usage = guard.usage("default")
    assert usage.reserved_usd == 0 and usage.spent_usd == record.cost_usd > 0


def test_a_parsed_raw_stream_is_settled_from_the_provider_usage(oai) -> None:
    guard, records = _guard()
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HELLO, stream=True, max_completion_tokens=100
    ) as response:
        chunks = list(response.parse())
    assert chunks
    (record,) = records
    assert record.usage_source == "provider" and record.output_tokens < 100


def test_async_stream_read_as_bytes_is_settled(oai) -> None:
    guard, records = _guard()
    client = guard.wrap(openai.AsyncOpenAI(base_url=oai.base_url, api_key="x"))

    async def relay() -> int:
        async with client.responses.with_streaming_response.create(
            model="gpt-4o", input="hi", stream=True, max_output_tokens=50
        ) as response:
            return len(await response.read())

    assert asyncio.run(relay()) > 0
    (record,) = records
    assert record.output_tokens == 50
    assert guard.usage("default").reserved_usd == 0


def test_a_raw_stream_dropped_unread_is_settled(oai) -> None:
    guard, records = _guard()
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, stream=True, max_completion_tokens=40
    )
    assert raw.http_response.read()
    del raw
    gc.collect()
    (record,) = records
    assert record.output_tokens == 40
    assert guard.usage("default").reserved_usd == 0


def test_anthropic_stream_read_as_lines_is_settled() -> None:
    guard, records = _guard()
    with FakeAnthropicServer() as server:
        client = guard.wrap(anthropic.Anthropic(base_url=server.base_url, api_key="x"))
        with client.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", messages=HELLO, max_tokens=50, stream=True
        ) as response:
            assert sum(1 for _ in response.iter_lines()) > 0
    (record,) = records
    assert record.output_tokens >= 50  # the reservation (Claude's count carries a margin)
    assert guard.usage("default").reserved_usd == 0
