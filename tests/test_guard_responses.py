"""The Responses API through a guarded client: the real ``openai`` SDK over a loopback
socket against guardrail.testing.FakeOpenAIServer."""

from __future__ import annotations

import inspect
from decimal import Decimal
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, ContextWindowExceeded, Guard, Policy
from guardrail.catalog.pricing import CONTAINER_USD, usage_cost
from guardrail.counting import count_messages
from guardrail.providers.openai import ResponsesAdapter
from guardrail.providers.openai.responses import BUILTIN_TOOL_ASSUMED_CALLS, count_request_input
from guardrail.stores.base import usd_to_nanos
from guardrail.testing import FakeOpenAIServer, ToolCall
from tests._sdk_http import cut_stream_errors, http_library

MODEL = "gpt-4o"
ADD = {
    "type": "function",
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


def make(
    server: FakeOpenAIServer, policy: Policy | None = None, *, async_: bool = False, **kw: Any
) -> tuple[Guard, Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(policy or Policy(loop_limit=None), sinks=[records.append], **kw)
    raw_cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    return guard, guard.wrap(raw_cls(base_url=server.base_url, api_key="t", max_retries=3)), records


def no_leak(guard: Guard, tenant: str = "default") -> None:
    assert guard.usage(tenant).reserved_usd == 0


# -- counting ---------------------------------------------------------------------------


def test_a_string_input_counts_as_one_user_message() -> None:
    expected = count_messages([{"role": "user", "content": "Hello there"}], MODEL)
    assert count_request_input({"model": MODEL, "input": "Hello there"}) == expected


def test_items_count_as_their_chat_completions_twins() -> None:
    request = {
        "model": MODEL,
        "instructions": "Be terse.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "add 1 and 2"}]},
            {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a":1,"b":2}'},
            {"type": "function_call_output", "call_id": "c1", "output": "3"},
        ],
        "tools": [ADD],
    }
    chat = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "add 1 and 2"}]},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a":1,"b":2}'},
                }
            ],
        },
        {"role": "tool", "content": "3"},
    ]
    tools = [
        {"type": "function", "function": {k: ADD[k] for k in ("name", "description", "parameters")}}
    ]
    assert count_request_input(request) == count_messages(chat, MODEL, tools=tools)


def test_a_structured_output_schema_is_counted() -> None:
    plain = count_request_input({"model": MODEL, "input": "hi"})
    schema = {
        "type": "json_schema",
        "name": "answer",
        "schema": {"type": "object", "properties": {"x": {"type": "string"}}},
    }
    assert count_request_input({"model": MODEL, "input": "hi", "text": {"format": schema}}) > plain


def test_malformed_input_is_a_clear_error_and_nothing_is_sent(server) -> None:
    guard, client, records = make(server)
    for bad, field in [
        ({"input": 5}, "input"),
        ({"input": [5]}, "input[0]"),
        ({"input": [{"content": "x"}]}, "input[0]"),
        ({"input": "x", "max_output_tokens": -1}, "max_output_tokens"),
        ({"input": "x", "instructions": 3}, "instructions"),
        ({"input": "x", "tools": "all"}, "tools"),
        ({}, "input"),
    ]:
        with pytest.raises(guardrail.InvalidRequestError, match=field.replace("[", r"\[")):
            client.responses.create(model=MODEL, **bad)
    assert server.requests == []
    no_leak(guard)


# -- the call ---------------------------------------------------------------------------


def test_create_is_reserved_and_settled_from_its_usage(server) -> None:
    guard, client, records = make(server, Policy(daily_spend_usd=5, default_output_tokens=64))
    response = client.responses.create(model=MODEL, input="Hello there")
    assert isinstance(response, openai.types.responses.Response)
    (record,) = records
    assert record.outcome == "ok" and record.usage_source == "provider"
    assert record.input_tokens == response.usage.input_tokens
    assert record.output_tokens == response.usage.output_tokens
    info = guardrail.model_info(MODEL)
    assert record.cost_usd == usage_cost(
        info, guardrail.TokenUsage(record.input_tokens, record.output_tokens)
    )
    # The policy's default output was reserved, and sent as the bound.
    assert server.response_requests[-1].json["max_output_tokens"] == 64
    assert record.reserved_usd == guardrail.estimate_cost(MODEL, record.input_tokens, 64)
    assert guard.usage("default").spent_usd == record.cost_usd
    no_leak(guard)


def test_a_tiny_cap_refuses_before_anything_is_sent(server) -> None:
    guard, client, records = make(server, Policy(daily_spend_usd="0.000001"))
    with pytest.raises(BudgetExceeded):
        client.responses.create(model=MODEL, input="Hello there")
    with pytest.raises(BudgetExceeded):
        client.responses.create(model=MODEL, input="Hello there", stream=True)
    with pytest.raises(BudgetExceeded), client.responses.stream(model=MODEL, input="Hello"):
        pass
    assert server.response_requests == [] and [r.outcome for r in records] == ["rejected"] * 3


def test_reasoning_tokens_are_billed_as_output(server) -> None:
    server.reasoning_tokens = 40
    guard, client, records = make(server)
    response = client.responses.create(model="o3", input="Think.")
    assert response.output[0].type == "reasoning"
    assert (
        records[-1].reasoning_tokens == 40 == response.usage.output_tokens_details.reasoning_tokens
    )
    assert records[-1].output_tokens == response.usage.output_tokens > 40


def test_an_incomplete_response_is_settled_from_its_usage(server) -> None:
    server.reply = "word " * 100
    guard, client, records = make(server)
    response = client.responses.create(model=MODEL, input="Talk.", max_output_tokens=16)
    assert response.status == "incomplete"
    assert records[-1].outcome == "ok" and records[-1].output_tokens == 16
    no_leak(guard)


def test_parse_is_guarded(server) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    server.reply = '{"text": "hi"}'
    guard, client, records = make(server)
    parsed = client.responses.parse(model=MODEL, input="Say hi as JSON.", text_format=Answer)
    assert parsed.output_parsed == Answer(text="hi")
    assert records[-1].outcome == "ok" and guard.usage("default").requests == 1
    # The schema the model reads is reserved too.
    plain = count_request_input({"model": MODEL, "input": "Say hi as JSON."})
    with_schema = guard.engine.prepare(
        ResponsesAdapter(), {"model": MODEL, "input": "Say hi as JSON.", "text_format": Answer}
    )
    assert with_schema.prompt_tokens > plain
    no_leak(guard)


def test_raw_and_streaming_response_forms_are_guarded(server) -> None:
    guard, client, records = make(server)
    raw = client.responses.with_raw_response.create(model=MODEL, input="raw")
    assert raw.headers["x-request-id"] and raw.parse().output_text
    with client.responses.with_streaming_response.create(
        model=MODEL, input="streaming"
    ) as response:
        assert response.parse().output_text
    raw = client.with_raw_response.responses.create(model=MODEL, input="client raw", stream=True)
    assert list(raw.parse())[-1].type == "response.completed"
    assert [r.outcome for r in records] == ["ok", "ok", "stream_completed"]
    assert {r.usage_source for r in records} == {"provider"}
    no_leak(guard)


# -- streams ----------------------------------------------------------------------------


def test_a_stream_settles_from_its_terminal_event(server) -> None:
    guard, client, records = make(server)
    events = list(client.responses.create(model=MODEL, input="stream", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert records[-1].outcome == "stream_completed" and records[-1].usage_source == "provider"
    assert records[-1].output_tokens == events[-1].response.usage.output_tokens
    no_leak(guard)


def test_the_stream_helper_settles_at_once_when_left_early(server) -> None:
    guard, client, records = make(server)
    with client.responses.stream(model=MODEL, input="helper") as stream:
        final = stream.get_final_response()
    assert final.output_text and records[-1].outcome == "stream_completed"
    with client.responses.stream(model=MODEL, input="helper, left early") as stream:
        for _ in stream:
            break
    # Closed by the helper through the HTTP response: settled then, not at collection.
    assert records[-1].outcome == "stream_closed" and records[-1].usage_source == "local_count"
    no_leak(guard)


def test_a_cut_stream_is_settled_from_its_local_count(server) -> None:
    server.enqueue_stream_cut(after_chunks=5)
    guard, client, records = make(server)
    with pytest.raises(cut_stream_errors(openai)):
        for _ in client.responses.create(model=MODEL, input="cut", stream=True):
            pass
    record = records[-1]
    assert record.outcome == "stream_error" and record.usage_source == "local_count"
    assert record.input_tokens >= count_request_input({"model": MODEL, "input": "cut"})
    no_leak(guard)


def test_a_cut_reasoning_stream_is_settled_at_the_whole_reserved_output(server) -> None:
    # As for chat: o3 may have billed hidden reasoning the stream never showed.
    server.reasoning_tokens = 3_000
    server.enqueue_stream_cut(after_chunks=2)
    guard, client, records = make(server, Policy(max_attempts=1, loop_limit=None))
    with pytest.raises(cut_stream_errors(openai)):
        for _ in client.responses.create(
            model="o3", input="Think hard.", max_output_tokens=4_000, stream=True
        ):
            pass
    (record,) = records
    assert record.outcome == "stream_error" and record.output_tokens == 4_000
    assert record.cost_usd == record.reserved_usd
    no_leak(guard)


@pytest.mark.parametrize(
    ("model", "reasoning", "hidden"),
    [
        ("o3", None, True),
        ("gpt-4o", None, False),
        ("gpt-4o", {"effort": "low"}, True),
        ("gpt-5.1", {"effort": "none"}, False),
    ],
)
def test_hidden_reasoning_is_read_from_the_model_and_its_effort(model, reasoning, hidden) -> None:
    request: dict[str, Any] = {"model": model, "input": "hi"}
    if reasoning is not None:
        request["reasoning"] = reasoning
    assert ResponsesAdapter().read(request).hidden_reasoning is hidden


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 3}, "top_p"),
        ({"stream": "yes"}, "stream"),
        ({"metadata": {"k": b"bytes"}}, "metadata"),
    ],
)
def test_requests_the_api_would_reject_are_refused_before_reserving(server, bad, named) -> None:
    guard, client, records = make(server)
    with pytest.raises(guardrail.InvalidRequestError, match=named):
        client.responses.create(model=MODEL, input="hi", **bad)
    assert server.requests == [] and records == []
    no_leak(guard)


def test_a_failed_response_bills_its_input(server) -> None:
    server.enqueue_response_failure()
    guard, client, records = make(server)
    events = list(client.responses.create(model=MODEL, input="fail", stream=True))
    assert events[-1].type == "response.failed"
    assert records[-1].output_tokens == 0 and records[-1].input_tokens > 0
    assert records[-1].cost_usd > 0
    no_leak(guard)


async def test_async_create_stream_and_helper(server) -> None:
    guard, client, records = make(server, async_=True)
    response = await client.responses.create(model=MODEL, input="async")
    assert response.output_text
    stream = await client.responses.create(model=MODEL, input="async stream", stream=True)
    assert [e async for e in stream][-1].type == "response.completed"
    async with client.responses.stream(model=MODEL, input="async helper") as helper:
        async for _ in helper:
            break
    assert [r.outcome for r in records] == ["ok", "stream_completed", "stream_closed"]
    no_leak(guard)


# -- server-side state ------------------------------------------------------------------


def test_previous_response_history_is_reserved_from_what_was_recorded(server) -> None:
    guard, client, records = make(server)
    first = client.responses.create(model=MODEL, input="Hello there")
    second = client.responses.create(model=MODEL, input="And now?", previous_response_id=first.id)
    history = first.usage.input_tokens + first.usage.output_tokens
    assert records[-1].extra["history_tokens"] == history
    # Reserved with the history, and the provider billed it: nothing was under-reserved.
    assert second.usage.input_tokens == history + count_request_input(
        {"model": MODEL, "input": "And now?"}
    )
    assert records[-1].input_tokens == second.usage.input_tokens
    assert not any(r.path.endswith("/input_tokens") for r in server.requests)  # no extra call
    no_leak(guard)


def test_an_unknown_previous_response_is_counted_by_the_provider(server) -> None:
    guard, client, records = make(server)
    first = client.unwrapped.responses.create(model=MODEL, input="Made outside the guard")
    client.responses.create(model=MODEL, input="Continue", previous_response_id=first.id)
    assert any(r.path.endswith("/responses/input_tokens") for r in server.requests)
    assert records[-1].extra["exact_prompt_tokens"] == records[-1].input_tokens
    no_leak(guard)


def test_a_conversation_is_counted_by_the_provider(server) -> None:
    guard, client, records = make(server)
    from openai.resources.responses import Responses

    # openai 1.x before ``conversation`` existed: the field goes in extra_body
    takes = "conversation" in inspect.signature(Responses.create).parameters
    field = {"conversation": "conv_1"}
    conversation = field if takes else {"extra_body": field}
    client.responses.create(model=MODEL, input="one", **conversation)
    second = client.responses.create(model=MODEL, input="two", **conversation)
    counts = [r for r in server.requests if r.path.endswith("/input_tokens")]
    assert len(counts) == 2
    assert records[-1].extra["exact_prompt_tokens"] == second.usage.input_tokens
    no_leak(guard)


def test_history_that_cannot_be_bounded_is_refused(server, monkeypatch) -> None:
    guard, client, records = make(server)
    first = client.unwrapped.responses.create(model=MODEL, input="outside")

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise openai.APIConnectionError(request=httpx_request())

    plain = client._guardrail.unretried(client)
    counter = getattr(plain.responses, "input_tokens", None)
    if counter is not None:
        monkeypatch.setattr(counter, "count", failing)
    else:  # an SDK without the resource posts the body itself
        monkeypatch.setattr(plain, "post", failing)
    with pytest.raises(guardrail.InvalidRequestError, match="cannot be bounded"):
        client.responses.create(model=MODEL, input="go", previous_response_id=first.id)
    assert len(server.response_requests) == 1 and records[-1].outcome == "rejected"
    no_leak(guard)


def httpx_request() -> Any:
    return http_library(openai).Request("POST", "http://fake/v1/responses/input_tokens")


def test_history_over_the_window_is_refused_before_sending(server) -> None:
    guard, client, records = make(server)
    first = client.responses.create(model=MODEL, input="Hello there")
    guard.store.remember("default", f"response:{first.id}", 200_000, 60)
    with pytest.raises(ContextWindowExceeded, match="history"):
        client.responses.create(model=MODEL, input="more", previous_response_id=first.id)
    assert len(server.response_requests) == 1
    no_leak(guard)


def test_opaque_items_are_counted_by_the_provider(server) -> None:
    guard, client, records = make(server)
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "c2VjcmV0"}
    client.responses.create(model=MODEL, input=[reasoning, {"role": "user", "content": "go on"}])
    assert any(r.path.endswith("/responses/input_tokens") for r in server.requests)
    assert "exact_prompt_tokens" in records[-1].extra


def test_background_is_refused(server) -> None:
    guard, client, records = make(server)
    with pytest.raises(guardrail.ConfigurationError, match="background"):
        client.responses.create(model=MODEL, input="later", background=True)
    assert server.requests == []


# -- tools and fees ---------------------------------------------------------------------


def test_a_tool_loop_is_metered_call_by_call(server) -> None:
    def reply(request: dict[str, Any]) -> Any:
        items = request.get("input")
        done = isinstance(items, list) and any(
            isinstance(i, dict) and i.get("type") == "function_call_output" for i in items
        )
        return "3" if done else [ToolCall("add", {"a": 1, "b": 2})]

    server.reply = reply
    guard, client, records = make(server)
    first = client.responses.create(model=MODEL, input="add 1 and 2", tools=[ADD])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "add"
    second = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "add 1 and 2"},
            call,  # an SDK object, appended as frameworks do
            {"type": "function_call_output", "call_id": call.call_id, "output": "3"},
        ],
        tools=[ADD],
    )
    assert second.output_text == "3"
    assert [r.outcome for r in records] == ["ok", "ok"] and guard.usage("default").requests == 2
    no_leak(guard)


def test_web_search_calls_are_reserved_and_settled_at_their_price(server) -> None:
    guard, client, records = make(server)
    info = guardrail.model_info(MODEL)
    plan = guard.engine.prepare(
        ResponsesAdapter(),
        {"model": MODEL, "input": "search", "tools": [{"type": "web_search"}], "max_tool_calls": 3},
    )
    assert plan.reserved_searches == 3
    plain = guard.engine.prepare(ResponsesAdapter(), {"model": MODEL, "input": "search"})
    searches = usage_cost(info, guardrail.TokenUsage(web_searches=3))
    assert plan.cost_usd - plain.cost_usd > searches * Decimal("0.99")
    assumed = guard.engine.prepare(
        ResponsesAdapter(),
        {"model": MODEL, "input": "search", "tools": [{"type": "web_search"}]},
    )
    assert assumed.reserved_searches == BUILTIN_TOOL_ASSUMED_CALLS


def test_a_code_interpreter_container_is_reserved() -> None:
    guard = Guard()
    plan = guard.engine.prepare(
        ResponsesAdapter(),
        {
            "model": MODEL,
            "input": "run",
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
        },
    )
    assert plan.reserved_containers == 1
    reuse = guard.engine.prepare(
        ResponsesAdapter(),
        {
            "model": MODEL,
            "input": "run",
            "tools": [{"type": "code_interpreter", "container": "cntr_1"}],
        },
    )
    assert reuse.reserved_containers == 0
    fees = plan.cost_usd - guardrail.estimate_cost(MODEL, plan.prompt_tokens, plan.reserved_output)
    assert fees == CONTAINER_USD
    assert usd_to_nanos(CONTAINER_USD) == 30_000_000


def test_compact_is_guarded_and_reserves_the_whole_output(server) -> None:
    guard, client, records = make(server)
    if not hasattr(client.responses, "compact"):
        pytest.skip("this openai release has no responses.compact")
    compacted = client.responses.compact(model=MODEL, input="a long conversation")
    assert compacted.usage.output_tokens > 0
    assert records[-1].outcome == "ok"
    whole_output = guardrail.model_info(MODEL).max_output_tokens
    assert records[-1].reserved_usd == guardrail.estimate_cost(
        MODEL, records[-1].input_tokens, whole_output
    )
    assert "max_output_tokens" not in server.requests[-1].json
    no_leak(guard)


def test_trimming_keeps_whole_turns(server) -> None:
    guard, client, records = make(server, Policy(trim=True, max_input_tokens=120, loop_limit=None))
    long = "many words here " * 30
    items = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": long},
        {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": long},
        {"role": "user", "content": "Latest question?"},
    ]
    client.responses.create(model=MODEL, input=items)
    sent = server.response_requests[-1].json["input"]
    assert sent[0]["role"] == "developer" and sent[-1]["content"] == "Latest question?"
    assert not any(i.get("type") == "function_call_output" for i in sent)
    assert records[-1].trimmed_messages == 3
