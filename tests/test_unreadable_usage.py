"""A usage count the provider sent but that cannot be read (missing, null, negative, a
string, ``1e400`` in the JSON) is never billed as 0, on any adapter: an unreadable input is
billed at guardrail's count of the prompt, an unreadable output at the whole reserved
output (a stream's at its local count), and the readable fields are kept. A 200 without
any usage is billed the prompt and the whole reserved output. Real SDK, answers from an
in-process transport (the bodies are written as raw JSON, so they can hold ``1e400``)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import FakeAnthropicServer
from tests._sdk_http import http_library

MODEL = "gpt-4o"
MSG = [{"role": "user", "content": "Say something about budgets, please."}]
PROMPT = guardrail.count_messages(MSG, MODEL)
INF = "1e400"  # valid JSON, read as float("inf")


def raw_json(value: Any) -> str:
    """``value`` as JSON, with the string ``INF`` written as the number 1e400."""
    return json.dumps(value).replace(f'"{INF}"', INF)


def client_answering(body: str, *, stream: bool = False) -> openai.OpenAI:
    httpx = http_library(openai)
    kind = "text/event-stream" if stream else "application/json"

    def handler(request: Any) -> Any:
        return httpx.Response(200, content=body.encode(), headers={"content-type": kind})

    return openai.OpenAI(
        base_url="http://fake/v1",
        api_key="t",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def completion(usage: Any, reply: str = "Budgets are good.") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def guarded(body: str, **kw: Any) -> tuple[list[guardrail.UsageRecord], Any]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=1), sinks=[records.append])
    return records, guard.wrap(client_answering(body, **kw))


BAD = [None, -5, "many", [], {"n": 1}, INF]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_an_unreadable_prompt_count_is_billed_at_the_counted_prompt(bad: Any) -> None:
    usage = {
        "prompt_tokens": bad,
        "completion_tokens": 5,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    records, client = guarded(raw_json(completion(usage)))
    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50)
    (record,) = records
    assert (record.input_tokens, record.output_tokens) == (PROMPT, 5)
    assert record.cached_input_tokens == 3  # the readable fields are kept
    assert record.usage_source == "local_count"
    assert record.cost_usd == guardrail.usage_cost(
        MODEL, guardrail.TokenUsage(input_tokens=PROMPT, output_tokens=5, cached_input_tokens=3)
    )


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_an_unreadable_output_count_is_billed_at_the_reserved_output(bad: Any) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": bad, "total_tokens": 12}
    records, client = guarded(raw_json(completion(usage)))
    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50)
    (record,) = records
    assert (record.input_tokens, record.output_tokens) == (12, 50)
    assert record.cost_usd == guardrail.estimate_cost(MODEL, 12, 50)


def test_a_usage_of_nulls_is_billed_at_the_reservation() -> None:
    usage = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    records, client = guarded(raw_json(completion(usage)))
    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50)
    (record,) = records
    assert (record.input_tokens, record.output_tokens) == (PROMPT, 50)
    assert record.cost_usd == record.reserved_usd > 0


def test_a_200_without_usage_is_billed_the_whole_reserved_output() -> None:
    reply = "Budgets are good. " * 60
    records, client = guarded(raw_json(completion(None, reply)))
    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=500)
    (record,) = records
    assert guardrail.count_text(reply, MODEL) < 500
    assert (record.input_tokens, record.output_tokens) == (PROMPT, 500)
    assert record.usage_source == "local_count"
    assert record.cost_usd == record.reserved_usd


def stream_body(usage: dict[str, Any]) -> str:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": usage},
    ]
    return "".join(f"data: {raw_json(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_an_infinite_count_in_a_stream_neither_crashes_it_nor_is_free(field: str) -> None:
    usage: dict[str, Any] = {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}
    usage[field] = INF
    records, client = guarded(stream_body(usage), stream=True)
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=10, stream=True)
    texts = [c.choices[0].delta.content for c in stream if c.choices]  # read to its end
    assert texts[0] == "Hello"
    (record,) = records
    assert record.outcome == "stream_completed" and record.usage_source == "local_count"
    if field == "prompt_tokens":
        assert (record.input_tokens, record.output_tokens) == (PROMPT, 1)
    else:  # the stream's own count of its output, not the reserved 10
        assert (record.input_tokens, record.output_tokens) == (8, 1)


def test_responses_unreadable_counts_are_not_free() -> None:
    body = {
        "id": "resp_x",
        "object": "response",
        "created_at": 1,
        "model": MODEL,
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_x",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hi.", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": -1, "output_tokens": INF, "total_tokens": 1},
    }
    records, client = guarded(raw_json(body))
    client.responses.create(model=MODEL, input="Hi there", max_output_tokens=50, store=False)
    (record,) = records
    assert record.input_tokens == record.extra.get("reserved_prompt_tokens", record.input_tokens)
    assert record.input_tokens > 0 and record.output_tokens == 50
    assert record.cost_usd == record.reserved_usd


def test_embeddings_unreadable_prompt_count_is_the_counted_input() -> None:
    body = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 1.0]}],
        "usage": {"prompt_tokens": None, "total_tokens": None},
    }
    records, client = guarded(raw_json(body))
    client.embeddings.create(model="text-embedding-3-small", input="budgets are good")
    (record,) = records
    assert record.input_tokens == guardrail.count_text("budgets are good", "text-embedding-3-small")
    assert record.cost_usd == record.reserved_usd > 0


HI = [{"role": "user", "content": "Write three paragraphs."}]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_bad_input_keeps_the_sound_output_and_cache_reads(stream: bool) -> None:
    patch = {"input_tokens": FakeAnthropicServer.DROP}
    with FakeAnthropicServer(
        output_tokens=240, cache_read_input_tokens=4, usage_patch=patch
    ) as fake:
        records: list[guardrail.UsageRecord] = []
        guard = Guard(Policy(daily_spend_usd=1, loop_limit=None), sinks=[records.append])
        client = guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t"))
        out = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=500, messages=HI, stream=stream
        )
        if stream:
            assert list(out)[-1].type == "message_stop"
    (record,) = records
    assert record.output_tokens == 240 and record.cached_input_tokens == 4
    # The prompt held: the larger of the local estimate and the provider's count.
    assert record.input_tokens >= record.extra["exact_prompt_tokens"] > 4
    assert record.usage_source == "local_count"


def test_anthropic_bad_output_is_billed_at_the_reserved_output() -> None:
    with FakeAnthropicServer(usage_patch={"output_tokens": -3}) as fake:
        records: list[guardrail.UsageRecord] = []
        guard = Guard(Policy(daily_spend_usd=1, loop_limit=None), sinks=[records.append])
        client = guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t"))
        client.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=HI)
    (record,) = records
    assert record.output_tokens == 500 and record.input_tokens > 0
