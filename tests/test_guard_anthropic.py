"""The guarded Anthropic client, through the real ``anthropic`` SDK, against the fake server."""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import math
import runpy
import struct
import warnings
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, ContextWindowExceeded, Guard, Policy
from guardrail.counting import CLAUDE_SAFETY_MARGIN
from guardrail.providers.anthropic import (
    NONSTREAMING_MAX_TOKENS,
    PDF_PAGE_TOKENS,
    TOOL_USE_SYSTEM_PROMPT_TOKENS,
    GuardedAnthropic,
)
from guardrail.stores.base import usd_to_nanos
from guardrail.testing import FakeAnthropicServer
from tests._sdk_http import OVERLOADED, http_library, thinking_tokens

MODEL = "claude-haiku-4-5"  # 200K window, 64K output; $1 / $5 per MTok
HI = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location, in Celsius or Fahrenheit.",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}


def make(
    fake: FakeAnthropicServer,
    policy: Policy | None = None,
    *,
    async_: bool = False,
    exact_count: bool = True,
    **guard_kw: Any,
) -> tuple[Guard, Any]:
    raw_cls = anthropic.AsyncAnthropic if async_ else anthropic.Anthropic
    raw = raw_cls(base_url=fake.base_url, api_key="test", max_retries=5)
    guard = Guard(policy or Policy(loop_limit=None), **guard_kw)
    return guard, guard.wrap(raw, exact_count=exact_count)


def no_leak(guard: Guard, tenant: str = "default") -> None:
    assert guard.usage(tenant).reserved_usd == 0


def counted(fake: FakeAnthropicServer, **request: Any) -> int:
    """guardrail's local estimate of a request's prompt (a cap of 1 token refuses every
    request before anything is sent, and the refusal names the count)."""
    guard, client = make(fake, Policy(max_input_tokens=1, loop_limit=None))
    with pytest.raises(ContextWindowExceeded) as info:
        client.messages.create(model=MODEL, max_tokens=10, **request)
    return info.value.prompt_tokens


def png(width: int, height: int) -> str:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    )
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def pdf(pages: int) -> str:
    body = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    body += b"2 0 obj << /Type /Pages /Count %d >> endobj\n" % pages
    for i in range(pages):
        body += b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj\n" % (i + 3)
    return base64.b64encode(body + b"%%EOF\n").decode()


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "Hello there"}]}]


# -- settling ---------------------------------------------------------------------------


def test_settles_actual_usage_and_cost(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    out = client.for_tenant("alice").messages.create(
        model=MODEL, max_tokens=100, messages=HI, system="Be brief."
    )
    assert out.content[0].text == fake.reply
    expected = guardrail.usage_cost(MODEL, out.usage)
    usage = guard.usage("alice")
    assert usage.spent_usd == Decimal(usd_to_nanos(expected)) / 10**9 > 0
    assert usage.requests == 1 and usage.reserved_usd == 0
    assert usage.input_tokens == out.usage.input_tokens
    assert usage.output_tokens == out.usage.output_tokens
    (record,) = records
    assert record.outcome == "ok" and record.usage_source == "provider" and record.attempts == 1
    assert record.cost_usd == expected and record.tenant == "alice"
    assert record.request_id == fake.message_requests[-1].request_id
    assert record.extra["exact_prompt_tokens"] == out.usage.input_tokens


@pytest.mark.parametrize("how", ["create", "stream=True", "messages.stream"])
def test_cache_reads_and_writes_are_priced_at_their_own_rates(fake, how) -> None:
    fake.prompt_tokens = 1400  # 100 plain input + 1000 read from cache + 300 written to it
    fake.cache_read_input_tokens = 1000
    fake.cache_write_5m_tokens = 100
    fake.cache_write_1h_tokens = 200
    fake.output_tokens = 50
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": HI}
    if how == "create":
        client.messages.create(**request)
    elif how == "stream=True":
        list(client.messages.create(stream=True, **request))
    else:
        with client.messages.stream(**request) as stream:
            stream.until_done()
    # claude-haiku-4-5, USD per million tokens: input 1, cache read 0.10,
    # 5-minute cache write 1.25, 1-hour cache write 2, output 5.
    by_hand = (
        100 * Decimal(1)
        + 1000 * Decimal("0.10")
        + 100 * Decimal("1.25")
        + 200 * Decimal(2)
        + 50 * Decimal(5)
    ) / 10**6
    assert by_hand == Decimal("0.000975")
    (record,) = records
    assert record.usage_source == "provider" and record.cost_usd == by_hand
    assert record.input_tokens == 1400 and record.cached_input_tokens == 1000
    assert record.extra["cache_write_tokens"] == 300
    assert record.extra["cache_write_1h_tokens"] == 200
    assert guard.usage("default").spent_usd == by_hand
    assert guard.usage("default").input_tokens == 1400


def test_thinking_tokens_are_billed_as_output(fake) -> None:
    fake.thinking = "The user greets me. A short, friendly greeting back is right."
    fake.prompt_tokens = 20
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    out = client.messages.create(model=MODEL, max_tokens=200, messages=HI)
    assert out.content[0].type == "thinking"
    (record,) = records
    thinking = thinking_tokens(out.usage)
    assert record.reasoning_tokens == thinking > 0
    assert record.output_tokens == out.usage.output_tokens > thinking
    assert record.cost_usd == (20 * Decimal(1) + out.usage.output_tokens * Decimal(5)) / 10**6


# -- budgets ----------------------------------------------------------------------------


def test_rejection_sends_nothing_not_even_a_count(fake) -> None:
    guard, client = make(fake, Policy(daily_spend_usd="0.000001", loop_limit=None))
    with pytest.raises(BudgetExceeded) as info:
        client.for_tenant("dave").messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert fake.requests == []
    assert info.value.tenant == "dave" and info.value.limit == "daily_spend_usd"
    no_leak(guard, "dave")


async def test_async_rejection_sends_nothing(fake) -> None:
    guard, client = make(fake, Policy(daily_spend_usd="0.000001"), async_=True)
    with pytest.raises(BudgetExceeded):
        await client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    with pytest.raises(BudgetExceeded):
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI):
            pass
    assert fake.requests == []


def test_one_tenant_budget_across_openai_and_anthropic(fake, server) -> None:
    records: list[guardrail.UsageRecord] = []
    per_call = guardrail.estimate_cost(MODEL, 100, 50) + guardrail.estimate_cost("gpt-4o", 100, 50)
    cap = per_call * 3
    guard = Guard(Policy(daily_spend_usd=cap, loop_limit=None), sinks=[records.append])
    gpt = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t")).for_tenant("acme")
    claude = guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t"))
    claude = claude.for_tenant("acme")
    calls = 0
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(200):
            gpt.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=50)
            calls += 1
            claude.messages.create(model=MODEL, max_tokens=50, messages=HI)
            calls += 1
    assert info.value.tenant == "acme"
    usage = guard.usage("acme")
    assert usage.requests == calls == len(server.chat_requests) + len(fake.message_requests)
    assert {r.model for r in records if r.outcome == "ok"} == {"gpt-4o", MODEL}
    settled = sum(usd_to_nanos(r.cost_usd) for r in records if r.outcome == "ok")
    assert usage.spent_usd == Decimal(settled) / 10**9 <= cap
    no_leak(guard, "acme")
    # Another tenant still has its own budget, on either provider.
    guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t")).for_tenant(
        "other"
    ).messages.create(model=MODEL, max_tokens=50, messages=HI)


# -- counting ---------------------------------------------------------------------------

LONG = "You are a meticulous assistant who answers in the user's language. " * 40


def test_counting_includes_system_tools_images_and_documents(fake) -> None:
    base = counted(fake, messages=user())
    system = counted(fake, messages=user(), system=LONG)
    assert system - base >= guardrail.count_text(LONG, MODEL)
    blocks = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    assert counted(fake, messages=user(), system=blocks) == system
    tools = counted(fake, messages=user(), tools=[WEATHER])
    assert tools - base > TOOL_USE_SYSTEM_PROMPT_TOKENS + guardrail.count_text(
        WEATHER["description"], MODEL
    )
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}
    big = counted(
        fake, messages=user({**image, "source": {**image["source"], "data": png(1000, 1000)}})
    )
    small = counted(
        fake, messages=user({**image, "source": {**image["source"], "data": png(200, 200)}})
    )
    remote = counted(
        fake, messages=user({"type": "image", "source": {"type": "url", "url": "https://x/a.png"}})
    )
    # Anthropic's 28px patches, from the header: ceil(1000/28)^2 and ceil(200/28)^2.
    assert big - base == 36 * 36
    assert small - base == 8 * 8
    assert remote - base == 1568  # never fetched: the most an image costs on the standard tier
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}}
    three_pages = counted(
        fake, messages=user({**document, "source": {**document["source"], "data": pdf(3)}})
    )
    assert three_pages - base == 3 * PDF_PAGE_TOKENS
    text_doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": LONG},
    }
    assert counted(fake, messages=user(text_doc)) - base >= guardrail.count_text(LONG, MODEL)
    assert fake.requests == []  # every one of these was refused before sending


def test_tool_use_and_results_in_history_are_counted(fake) -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": LONG}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": LONG}
    history = [
        *HI,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    assert counted(fake, messages=history) - counted(fake, messages=HI) >= 2 * guardrail.count_text(
        LONG, MODEL
    )


@pytest.mark.parametrize(
    ("policy", "request_kw", "sent"),
    [
        (Policy(default_output_tokens=300), {}, 300),
        (Policy(), {}, NONSTREAMING_MAX_TOKENS),  # the SDK refuses more without streaming
        (Policy(), {"stream": True}, 64_000),  # the model's whole output
        (Policy(), {"timeout": 3600.0}, 64_000),  # the caller took charge of the timeout
        (Policy(max_output_tokens=100), {}, 100),
        (Policy(max_output_tokens=100), {"max_tokens": 5000}, 100),
        (Policy(max_output_tokens=100), {"max_tokens": 50}, 50),
    ],
)
def test_max_tokens_is_always_sent_and_follows_the_policy(fake, policy, request_kw, sent) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, policy, sinks=[records.append])
    out = client.messages.create(model=MODEL, messages=HI, **request_kw)
    if request_kw.get("stream"):
        list(out)
    assert fake.message_requests[-1].json["max_tokens"] == sent
    assert records[-1].reserved_usd >= guardrail.estimate_cost(MODEL, 0, sent)


def test_output_over_the_cap_can_be_refused(fake) -> None:
    guard, client = make(fake, Policy(max_output_tokens=100, output_over_cap="reject"))
    with pytest.raises(ContextWindowExceeded, match="output cap"):
        client.messages.create(model=MODEL, max_tokens=5000, messages=HI)
    assert fake.requests == []


def test_prompt_over_the_window_is_refused_locally(fake) -> None:
    guard, client = make(fake)
    big = [{"role": "user", "content": "word " * 170_000}]
    with pytest.raises(ContextWindowExceeded, match="context window"):
        client.messages.create(model=MODEL, max_tokens=1000, messages=big)
    assert fake.requests == []


# -- exact counts -----------------------------------------------------------------------


def test_exact_counts_are_cached_per_content(fake) -> None:
    guard, client = make(fake)
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": HI, "system": "Hi"}
    client.messages.create(**request)
    client.messages.create(**request)
    client.for_tenant("bob").messages.create(**{**request, "max_tokens": 20})
    assert len(fake.count_requests) == 1 and len(fake.message_requests) == 3
    assert fake.count_requests[0].json == {"model": MODEL, "messages": HI, "system": "Hi"}
    client.messages.create(**{**request, "system": "Hello"})  # other content: counted
    client.messages.create(**{**request, "tools": [WEATHER]})
    assert len(fake.count_requests) == 3
    assert len(client.count_cache) == 3


def test_count_failure_falls_back_to_the_estimate(fake, caplog) -> None:
    estimate = counted(fake, messages=HI)
    fake.enqueue_error(500, endpoint="count_tokens")
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        out = client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert out.content[0].text == fake.reply
    assert "token count failed" in caplog.text
    assert len(fake.count_requests) == 1 and len(fake.message_requests) == 1
    assert "exact_prompt_tokens" not in records[-1].extra
    assert records[-1].reserved_usd == guardrail.estimate_cost(MODEL, estimate, 100)
    client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert len(fake.count_requests) == 2  # a failure is not cached
    fake.enqueue_disconnect(endpoint="count_tokens")
    client.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "x"}])
    assert len(fake.message_requests) == 3
    no_leak(guard)


def test_a_client_without_a_count_endpoint_stops_asking(fake, caplog) -> None:
    fake.enqueue_error(404, endpoint="count_tokens")  # e.g. a gateway without the route
    guard, client = make(fake)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        client.messages.create(model=MODEL, max_tokens=100, messages=HI)
        client.for_tenant("bob").messages.create(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Other"}]
        )
    assert len(fake.count_requests) == 1 and len(fake.message_requests) == 2
    assert client.exact_count is False
    assert caplog.text.count("counted locally from now on") == 1


def test_exact_count_off_makes_no_count_request(fake) -> None:
    guard, client = make(fake, exact_count=False)
    client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert fake.count_requests == [] and len(fake.message_requests) == 1
    assert client.with_options(timeout=9.0).for_tenant("x").exact_count is False


def test_reservation_is_the_larger_of_estimate_and_exact(fake) -> None:
    estimate = counted(fake, messages=HI)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    fake.prompt_tokens = 1  # the provider counts less: the estimate stays reserved
    client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert records[-1].reserved_usd == guardrail.estimate_cost(MODEL, estimate, 100)
    assert records[-1].extra["exact_prompt_tokens"] == 1
    fake.prompt_tokens = 5000  # the estimate was low: the exact count is reserved
    client.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "?"}])
    assert records[-1].reserved_usd == guardrail.estimate_cost(MODEL, 5000, 100)
    assert records[-1].input_tokens == 5000


def test_a_low_estimate_corrected_by_the_count_can_still_be_refused(fake) -> None:
    estimate = counted(fake, messages=HI)
    cap = guardrail.estimate_cost(MODEL, estimate, 10) * 2  # room for two estimates
    guard, client = make(fake, Policy(daily_spend_usd=cap, loop_limit=None))
    fake.prompt_tokens = estimate * 20
    with pytest.raises(BudgetExceeded):
        client.messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert len(fake.count_requests) == 1 and fake.message_requests == []
    no_leak(guard)
    fake.prompt_tokens = 300_000  # over claude-haiku-4-5's 200K window by Anthropic's count
    guard, client = make(fake)
    with pytest.raises(ContextWindowExceeded, match="provider's own count"):
        client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert fake.message_requests == []
    no_leak(guard)


# -- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "error", "retried"),
    [
        ({"status": 429}, anthropic.RateLimitError, True),
        ({"status": 529}, OVERLOADED, True),
        ({"status": 500}, anthropic.InternalServerError, True),
        (
            {"status": 400, "message": "prompt is too long: 210000 tokens > 200000 maximum"},
            anthropic.BadRequestError,
            False,
        ),
        ({"status": 401}, anthropic.AuthenticationError, False),
    ],
)
def test_retry_counts_per_error(fake, sleeps, script, error, retried) -> None:
    for _ in range(4):
        fake.enqueue_error(**script)
    guard, client = make(fake, Policy(max_attempts=3, loop_limit=None), sleep=sleeps.append)
    with pytest.raises(error) as info:  # the SDK's own exception, after the last attempt
        client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert info.value.status_code == script["status"]
    assert len(fake.message_requests) == (3 if retried else 1)
    assert len(sleeps) == (2 if retried else 0)
    assert len(fake.count_requests) == 1  # counted once per call, not per attempt
    no_leak(guard)
    assert guard.usage("default").spent_usd == 0  # failures without usage cost nothing


def test_retry_after_is_honoured_and_connection_errors_are_retried(fake, sleeps) -> None:
    fake.enqueue_error(429, retry_after=2)
    fake.enqueue_disconnect()
    records: list[guardrail.UsageRecord] = []
    guard, client = make(
        fake, Policy(max_attempts=4, loop_limit=None), sleep=sleeps.append, sinks=[records.append]
    )
    out = client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert out.content[0].text == fake.reply
    assert sleeps[0] == 2.0 and len(sleeps) == 2
    assert records[-1].attempts == 3
    # The dropped connection came after the request left: its prompt is settled as billed.
    assert [r.outcome for r in records] == ["error", "ok"]
    assert guard.usage("default").requests == 2


def test_sdk_retries_are_off_so_one_layer_retries(fake, sleeps) -> None:
    for _ in range(6):
        fake.enqueue_error(529)
    guard, client = make(fake, Policy(max_attempts=2), sleep=sleeps.append)  # raw asks for 5
    with pytest.raises(OVERLOADED):
        client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert len(fake.message_requests) == 2 and len(sleeps) == 1


# -- streaming --------------------------------------------------------------------------


def test_message_stream_helper_is_retried_before_it_opens(fake, sleeps) -> None:
    fake.enqueue_error(529)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sleep=sleeps.append, sinks=[records.append])
    with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as stream:
        assert stream.get_final_text() == fake.reply
    assert len(fake.message_requests) == 2 and len(sleeps) == 1
    assert records[-1].attempts == 2 and records[-1].outcome == "stream_completed"
    no_leak(guard)


def test_stream_true_settles_from_the_events_usage(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True))
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == fake.reply
    start, delta = events[0], events[-2]
    record = records[-1]
    assert record.outcome == "stream_completed" and record.usage_source == "provider"
    assert record.input_tokens == start.message.usage.input_tokens
    assert record.output_tokens == delta.usage.output_tokens
    assert (
        record.cost_usd
        == (start.message.usage.input_tokens * Decimal(1) + delta.usage.output_tokens * Decimal(5))
        / 10**6
    )
    assert guard.usage("default").requests == 1
    no_leak(guard)


def test_message_stream_helper_is_guarded(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    manager = client.messages.stream(model=MODEL, max_tokens=100, messages=HI)
    assert fake.requests == [] and guard.usage("default").reserved_usd == 0  # not entered yet
    with manager as stream:
        assert guard.usage("default").reserved_usd > 0  # reserved while it runs
        assert "".join(stream.text_stream) == fake.reply
        final = stream.get_final_message()
    assert final.content[0].text == fake.reply
    record = records[-1]
    assert record.outcome == "stream_completed" and record.usage_source == "provider"
    assert record.cost_usd == guardrail.usage_cost(MODEL, final.usage)
    assert record.request_id == final.id
    no_leak(guard)


def test_stream_closed_early_is_settled_from_the_local_count(fake) -> None:
    fake.reply = "one two three four five six seven eight nine ten eleven twelve"
    fake.tokens_per_delta = 1
    fake.prompt_tokens = 40
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    stream = client.messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True)
    deltas = 0
    for event in stream:
        if event.type == "content_block_delta":
            deltas += 1  # one o200k token each
            if deltas == 4:
                break
    record = records[-1]  # breaking out of the loop settled it
    assert record.outcome == "stream_closed" and record.usage_source == "local_count"
    assert record.input_tokens == 40  # the provider's, from message_start
    assert record.output_tokens == math.ceil(4 * CLAUDE_SAFETY_MARGIN)
    assert record.cost_usd == (40 * Decimal(1) + record.output_tokens * Decimal(5)) / 10**6 > 0
    no_leak(guard)


def test_message_stream_left_early_is_settled_and_never_zero(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as stream:
        for event in stream:
            if event.type == "text":
                break
    assert records[-1].outcome == "stream_closed"
    assert records[-1].usage_source == "local_count" and records[-1].cost_usd > 0
    with client.messages.stream(model=MODEL, max_tokens=100, messages=HI):
        pass  # never read: the prompt is still billed
    assert records[-1].outcome == "stream_closed" and records[-1].input_tokens > 0
    assert records[-1].cost_usd > 0
    assert guard.usage("default").requests == 2
    no_leak(guard)


@pytest.mark.parametrize("after_events", [0, 4])
def test_stream_dropped_connection_settles_and_raises(fake, after_events) -> None:
    fake.enqueue_stream_cut(after_events=after_events)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    with pytest.raises(http_library(anthropic).RemoteProtocolError):
        for _ in client.messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True):
            pass
    record = records[-1]
    assert record.outcome == "stream_error" and record.usage_source == "local_count"
    assert record.cost_usd > 0 and "RemoteProtocolError" in record.error
    assert record.input_tokens > 0
    assert guard.usage("default").requests == 1
    no_leak(guard)


def test_a_stream_using_all_its_max_tokens_is_not_an_overrun(fake) -> None:
    # Local counts of Claude output are estimates (times the safety margin): a stream
    # that stops exactly at max_tokens must not be mistaken for one that ignored it.
    fake.reply = "word " * 100
    fake.tokens_per_delta = 1
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    with client.messages.stream(model=MODEL, max_tokens=8, messages=HI) as stream:
        stream.until_done()
    assert records[-1].outcome == "stream_completed" and records[-1].output_tokens == 8


async def test_async_create_stream_and_helper(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, async_=True, sinks=[records.append])
    out = await client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert records[-1].cost_usd == guardrail.usage_cost(MODEL, out.usage)
    stream = await client.messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "message_stop" and records[-1].outcome == "stream_completed"
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as helper:
        assert await helper.get_final_text() == fake.reply
    assert records[-1].outcome == "stream_completed" and records[-1].usage_source == "provider"
    stream = await client.messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True)
    async for _ in stream:
        break
    await stream.close()
    assert records[-1].outcome == "stream_closed" and records[-1].cost_usd > 0
    assert guard.usage("default").requests == 4
    assert len(fake.count_requests) == 1  # the same prompt, counted once
    no_leak(guard)


async def test_cancellation_releases_the_reservation(fake) -> None:
    fake.enqueue_delay(30)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, async_=True, sinks=[records.append])
    task = asyncio.create_task(client.messages.create(model=MODEL, max_tokens=100, messages=HI))
    while not fake.message_requests:
        await asyncio.sleep(0.005)
    assert guard.usage("default").reserved_usd > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    no_leak(guard)
    assert records[-1].outcome == "cancelled"
    fake.reset()  # ends the scripted delay


# -- trimming ---------------------------------------------------------------------------


def agent_history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 100})
        call = {
            "type": "tool_use",
            "id": f"toolu_{i}",
            "name": "get_weather",
            "input": {"location": "Paris"},
        }
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, call]}
        )
        result = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "sunny " * 100}
        messages.append({"role": "user", "content": [result]})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 100})
    messages.append({"role": "user", "content": "the latest question"})
    call = {
        "type": "tool_use",
        "id": "toolu_last",
        "name": "get_weather",
        "input": {"location": "Oslo"},
    }
    messages.append({"role": "assistant", "content": [call]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_last", "content": "snow"}],
        }
    )
    return messages


def test_trimming_keeps_whole_turns_and_never_orphans_a_tool_result(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(
        fake, Policy(max_input_tokens=3000, trim=True, loop_limit=None), sinks=[records.append]
    )
    history = agent_history(20)
    client.messages.create(
        model=MODEL, max_tokens=100, system=LONG, tools=[WEATHER], messages=history
    )
    sent = fake.message_requests[-1].json["messages"]
    assert 3 < len(sent) < len(history)
    assert sent == history[len(history) - len(sent) :]  # the most recent, contiguous
    assert sent[-3:] == history[-3:]  # the latest turn, its pending tool call included
    assert sent[0]["role"] == "user" and isinstance(sent[0]["content"], str)  # a turn start
    calls = {
        b["id"]
        for m in sent
        if m["role"] == "assistant" and isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_use"
    }
    results = {
        b["tool_use_id"]
        for m in sent
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_result"
    }
    assert results <= calls
    assert counted(fake, messages=sent, system=LONG, tools=[WEATHER]) <= 3000
    assert records[-1].trimmed_messages == len(history) - len(sent)


def test_trimming_summary_is_a_user_message(fake) -> None:
    guard, client = make(
        fake,
        Policy(max_input_tokens=3000, trim=True, loop_limit=None),
        summarizer=lambda dropped: f"{len(dropped)} earlier messages about the weather",
    )
    client.messages.create(model=MODEL, max_tokens=100, messages=agent_history(20))
    sent = fake.message_requests[-1].json["messages"]
    assert sent[0]["role"] == "user" and "earlier messages about the weather" in sent[0]["content"]
    assert all(m["role"] in ("user", "assistant") for m in sent)


# -- the client surface ------------------------------------------------------------------


def test_passthrough_options_and_raw_responses(fake) -> None:
    guard, client = make(fake)
    assert isinstance(client, GuardedAnthropic)
    assert client.messages.count_tokens(model=MODEL, messages=HI).input_tokens > 0
    assert [m.id for m in client.models.list()] == fake.models
    assert client.base_url == client.unwrapped.base_url
    assert guard.usage("default").requests == 0  # passthrough calls are not metered
    copy = client.with_options(timeout=5.0)
    assert isinstance(copy, GuardedAnthropic) and copy.count_cache is client.count_cache
    copy.for_tenant("bob").messages.create(
        model=MODEL,
        max_tokens=50,
        messages=HI,
        extra_headers={"x-trace": "abc"},
        stop_sequences=anthropic.omit,
    )
    received = fake.message_requests[-1]
    assert received.headers["x-trace"] == "abc" and "stop_sequences" not in received.json
    assert guard.usage("bob").requests == 1
    raw = client.for_tenant("carol").messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=HI
    )
    assert raw.headers["request-id"] and raw.parse().content[0].text == fake.reply
    assert guard.usage("carol").output_tokens == raw.parse().usage.output_tokens
    assert "carol" not in repr(client) and "bob" in repr(copy.for_tenant("bob"))


def test_a_response_appended_to_the_history_is_counted_and_sent(fake) -> None:
    fake.thinking = "Considering."
    guard, client = make(fake, exact_count=False)
    first = client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    history = [
        *HI,
        {"role": "assistant", "content": first.content},  # SDK blocks, as the docs show
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert counted(fake, messages=history) > counted(fake, messages=HI) + guardrail.count_text(
        fake.reply, MODEL
    )
    client.messages.create(model=MODEL, max_tokens=100, messages=history)
    sent = fake.message_requests[-1].json["messages"][1]["content"]
    assert [b["type"] for b in sent] == ["thinking", "text"]


def test_tenant_from_metadata_user_id(fake) -> None:
    derive = guardrail.TenantFromRequest(key=b"0123456789abcdef")
    guard, client = make(fake, default_tenant=None, tenant_from_request=derive)
    client.messages.create(model=MODEL, max_tokens=10, messages=HI, metadata={"user_id": "u-9"})
    assert guard.usage(guard.request_tenant("u-9")).requests == 1
    with pytest.raises(guardrail.InvalidRequestError, match="no tenant"):
        client.messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert len(fake.message_requests) == 1


def test_wrap_rejects_unknown_options_for_openai(server) -> None:
    with pytest.raises(guardrail.ConfigurationError):
        Guard().wrap(openai.OpenAI(base_url=server.base_url, api_key="t"), exact_count=False)


def test_streaming_response_form_is_guarded(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    view = client.messages.with_streaming_response
    with view.create(model=MODEL, max_tokens=50, messages=HI) as response:
        assert response.headers["request-id"] and response.parse().content[0].text == fake.reply
    with view.create(model=MODEL, max_tokens=50, messages=HI, stream=True) as response:
        assert list(response.parse())[-1].type == "message_stop"
    assert [r.outcome for r in records] == ["ok", "stream_completed"]
    assert {r.usage_source for r in records} == {"provider"}
    assert len(fake.count_requests) == 1  # the SDK's raw-response marker is not counted
    assert guard.usage("default").requests == 2
    no_leak(guard)


async def test_async_raw_and_streaming_responses_are_guarded(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, async_=True, sinks=[records.append])
    raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=50, messages=HI)
    message = await raw.parse()
    assert raw.headers["request-id"] and message.content[0].text == fake.reply
    assert records[-1].output_tokens == message.usage.output_tokens
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=HI, stream=True
    )
    events = [e async for e in await raw.parse()]
    assert events[-1].type == "message_stop" and records[-1].outcome == "stream_completed"
    async with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=50, messages=HI
    ) as response:
        assert response.status_code == 200 and (await response.parse()).content
    assert [r.usage_source for r in records] == ["provider"] * 3
    assert guard.usage("default").requests == 3
    no_leak(guard)


def test_both_providers_example_runs_offline(monkeypatch, capsys) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    example = Path(__file__).resolve().parents[1] / "examples" / "both_providers.py"
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "stopped after" in out and "would exceed daily_spend_usd" in out
    assert "claude-haiku-4-5" in out and "gpt-4o" in out


# -- review fixes: every billed path guarded, cache writes, copies, iterables, bad usage --


def test_client_level_raw_and_streaming_responses_are_guarded(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    raw = client.with_raw_response.messages.create(model=MODEL, max_tokens=50, messages=HI)
    assert raw.headers["request-id"] and raw.parse().content[0].text == fake.reply
    with client.with_streaming_response.messages.create(
        model=MODEL, max_tokens=50, messages=HI
    ) as response:
        assert response.parse().content[0].text == fake.reply
    with client.for_tenant("bob").with_streaming_response.messages.create(
        model=MODEL, max_tokens=50, messages=HI, stream=True
    ) as response:
        assert list(response.parse())[-1].type == "message_stop"
    assert [r.outcome for r in records] == ["ok", "ok", "stream_completed"]
    assert guard.usage("default").requests == 2 and guard.usage("bob").requests == 1
    # Other resources are the SDK's own views, not metered.
    assert client.with_raw_response.models.list().parse().data[0].id == fake.models[0]
    assert client.with_raw_response.messages.count_tokens(model=MODEL, messages=HI).parse()
    no_leak(guard)
    no_leak(guard, "bob")
    # A refused call sends nothing, through these forms too.
    fake.reset()
    guard, client = make(fake, Policy(daily_spend_usd="0.000001", loop_limit=None))
    with pytest.raises(BudgetExceeded):
        client.with_raw_response.messages.create(model=MODEL, max_tokens=50, messages=HI)
    with (
        pytest.raises(BudgetExceeded),
        client.with_streaming_response.messages.create(model=MODEL, max_tokens=50, messages=HI),
    ):
        pass
    assert fake.message_requests == []


async def test_async_client_level_raw_and_streaming_responses_are_guarded(fake) -> None:
    guard, client = make(fake, async_=True)
    raw = await client.with_raw_response.messages.create(model=MODEL, max_tokens=50, messages=HI)
    assert (await raw.parse()).content[0].text == fake.reply
    async with client.with_streaming_response.messages.create(
        model=MODEL, max_tokens=50, messages=HI
    ) as response:
        assert (await response.parse()).content
    assert guard.usage("default").requests == 2
    no_leak(guard)


def started(value: Any) -> Any:
    """Make a call happen: await it, or enter the context manager it returns (the SDK's
    with_streaming_response sends on entering)."""
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    if hasattr(value, "__aenter__"):
        return asyncio.run(value.__aenter__())
    if hasattr(value, "__enter__"):
        return value.__enter__()
    return value


async def _awaited(value: Any) -> Any:
    return await value


def beta_calls(client: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 50, "messages": HI}
    return {
        "beta.messages.create": lambda: client.beta.messages.create(**request),
        "beta.messages.create(stream)": lambda: client.beta.messages.create(stream=True, **request),
        "beta.messages.stream": lambda: client.beta.messages.stream(**request),
        "beta.messages.parse": lambda: client.beta.messages.parse(**request),
        "beta.messages.tool_runner": lambda: client.beta.messages.tool_runner(tools=[], **request),
        "beta.messages.with_raw_response.create": (
            lambda: client.beta.messages.with_raw_response.create(**request)
        ),
        "beta.messages.with_streaming_response.create": (
            lambda: client.beta.messages.with_streaming_response.create(**request)
        ),
        "beta.with_raw_response.messages.create": (
            lambda: client.beta.with_raw_response.messages.create(**request)
        ),
        "with_raw_response.beta.messages.create": (
            lambda: client.with_raw_response.beta.messages.create(**request)
        ),
        "with_streaming_response.beta.messages.create": (
            lambda: client.with_streaming_response.beta.messages.create(**request)
        ),
    }


@pytest.mark.parametrize("async_", [False, True])
def test_beta_messages_are_refused_under_a_limit_not_silently_unguarded(fake, async_) -> None:
    guard, client = make(fake, Policy(daily_spend_usd=5, loop_limit=None), async_=async_)
    for name, call in beta_calls(client).items():
        with pytest.raises(guardrail.UnmeteredCall, match="cannot meter") as info:
            started(call())
        assert "unmetered='allow'" in str(info.value) and "client.unwrapped" in str(info.value)
        assert info.value.endpoint.startswith("beta.messages."), name
    assert fake.requests == []
    # The rest of beta is the SDK's (counting is free).
    if not async_:
        assert client.beta.messages.count_tokens(model=MODEL, messages=HI).input_tokens > 0
        assert client.unwrapped.beta.messages.create(model=MODEL, max_tokens=5, messages=HI)
        assert len(fake.message_requests) == 1
    assert guard.usage("default").requests == 0


def test_beta_messages_pass_unmetered_when_allowed_and_are_logged(fake, caplog) -> None:
    guard, client = make(fake, Policy(daily_spend_usd=5), unmetered="allow")
    with caplog.at_level("WARNING", logger="guardrail"):
        client.beta.messages.create(model=MODEL, max_tokens=5, messages=HI)
        client.beta.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert len(fake.message_requests) == 2 and guard.usage("default").requests == 0
    logged = [r for r in caplog.records if "beta.messages.create" in r.getMessage()]
    assert len(logged) <= 1  # once per process (an earlier test may have logged it)


def test_guarded_objects_can_be_copied(fake) -> None:
    import copy

    guard, client = make(fake)
    for obj in (client, client.messages, client.with_raw_response, client.beta):
        assert type(copy.copy(obj)) is type(obj)
    twin = copy.copy(client.for_tenant("ann"))
    assert isinstance(twin, GuardedAnthropic)
    twin.messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert guard.usage("ann").requests == 1  # the copy is still guarded, same tenant
    with pytest.raises(AttributeError):
        client._no_such_private_attribute  # noqa: B018


def test_generators_for_messages_tools_and_system_are_sent_whole_and_counted(fake) -> None:
    system = [{"type": "text", "text": "You are a weather bot. " * 20}]
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": ({"type": "text", "text": t} for t in ("Now", "please"))},
    ]
    listed: dict[str, Any] = {
        "system": system,
        "messages": [*history[:2], {"role": "user", "content": list(history[2]["content"])}],
        "tools": [WEATHER],
    }

    def generated() -> dict[str, Any]:
        return {
            "system": (b for b in system),
            "messages": (
                {**m, "content": ({"type": "text", "text": t} for t in ("Now", "please"))}
                if i == 2
                else m
                for i, m in enumerate(history)
            ),
            "tools": (t for t in [WEATHER]),
        }

    assert counted(fake, **generated()) == counted(fake, **listed)
    fake.reset()
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append], exact_count=False)
    client.messages.create(model=MODEL, max_tokens=20, **listed)
    client.messages.create(model=MODEL, max_tokens=20, **generated())
    with client.messages.stream(model=MODEL, max_tokens=20, **generated()) as stream:
        stream.until_done()
    first, *others = [r.json for r in fake.message_requests]
    for body in others:
        assert body["tools"] == first["tools"] == [WEATHER]
        assert body["system"] == first["system"] == system
        assert body["messages"] == first["messages"] == listed["messages"]
    assert len({r.reserved_usd for r in records}) == 1
    no_leak(guard)


@pytest.mark.parametrize("ttl", [None, "5m", "1h"])
@pytest.mark.parametrize("where", ["system", "message", "tool", "top level"])
def test_cache_writes_are_reserved_at_the_cache_write_price(fake, where, ttl) -> None:
    control: dict[str, Any] = (
        {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}
    )
    text = {"type": "text", "text": "Background for the whole conversation. " * 200}
    request: dict[str, Any] = {"system": [text], "messages": HI, "tools": [WEATHER]}
    plain = dict(request)
    if where == "system":
        request["system"] = [{**text, "cache_control": control}]
    elif where == "message":
        request["messages"] = [{"role": "user", "content": [{**text, "cache_control": control}]}]
        plain["messages"] = [{"role": "user", "content": [text]}]
    elif where == "tool":
        request["tools"] = [{**WEATHER, "cache_control": control}]
    else:
        request["cache_control"] = control
    prompt = counted(fake, **plain)
    assert prompt == counted(fake, **request) > 1_500
    # haiku: $1 input, $1.25 5-minute write, $2 1-hour write, $5 output per MTok.
    output = 10
    rate = Decimal(2) if ttl == "1h" else Decimal("1.25")
    between = (prompt * (1 + rate) / 2 + output * 5) / Decimal(10**6)
    fake.reset()
    guard, client = make(fake, Policy(daily_spend_usd=between, loop_limit=None), exact_count=False)
    client.for_tenant("plain").messages.create(model=MODEL, max_tokens=output, **plain)
    assert len(fake.message_requests) == 1  # the plain worst case fits the cap
    with pytest.raises(BudgetExceeded):
        client.for_tenant("cached").messages.create(model=MODEL, max_tokens=output, **request)
    assert len(fake.message_requests) == 1  # the cache-writing one does not: nothing sent
    no_leak(guard, "cached")


@pytest.mark.parametrize("ttl", ["5m", "1h"])
def test_a_cache_writing_call_never_costs_more_than_its_reservation(fake, ttl) -> None:
    fake.prompt_tokens = 3_000  # the provider's count, all of it written to the cache
    setattr(fake, f"cache_write_{ttl}_tokens", 3_000)
    fake.output_tokens = 50
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])
    control = {"type": "ephemeral", "ttl": ttl}
    client.messages.create(
        model=MODEL,
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief.", "cache_control": control}],
        messages=HI,
    )
    (record,) = records
    assert record.extra["cache_write_tokens"] == 3_000
    assert record.cost_usd > 3_000 / Decimal(10**6)  # priced above the plain input rate
    assert record.reserved_usd >= record.cost_usd
    no_leak(guard)


BAD_USAGE = [
    {"input_tokens": -7},
    {"output_tokens": -3},
    {"cache_read_input_tokens": -100, "cache_creation_input_tokens": -5},
    {"cache_creation": {"ephemeral_5m_input_tokens": -1, "ephemeral_1h_input_tokens": -9}},
    {"input_tokens": FakeAnthropicServer.DROP},
    {"output_tokens": FakeAnthropicServer.DROP, "cache_creation": FakeAnthropicServer.DROP},
    {"output_tokens": None, "input_tokens": "12"},
    {"output_tokens_details": {"thinking_tokens": -4}},
]


@pytest.mark.parametrize("patch", BAD_USAGE, ids=repr)
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_usage_never_fails_a_billed_call(fake, patch, stream) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, sinks=[records.append])

    def call(tenant: str) -> guardrail.UsageRecord:
        out = client.for_tenant(tenant).messages.create(
            model=MODEL, max_tokens=50, messages=HI, stream=stream
        )
        if stream:
            assert list(out)[-1].type == "message_stop"
        return records[-1]

    sound = call("sound")
    fake.usage_patch = patch
    record = call("patched")
    assert record.outcome == ("stream_completed" if stream else "ok")
    assert record.cost_usd >= 0 and record.input_tokens >= 0 and record.output_tokens >= 0
    assert record.cached_input_tokens >= 0 and record.reasoning_tokens >= 0
    # What the provider reported soundly is billed, negative cache and thinking counts as
    # 0. Without a sound input_tokens the engine bills its own count of the prompt (the
    # SDK may have coerced "12" to 12); without a sound output_tokens, the stream's local
    # count or the whole reserved output (max_tokens=50), never 0.
    if "input_tokens" in patch:
        assert record.input_tokens > 0
    else:
        assert record.input_tokens == sound.input_tokens
    if "output_tokens" in patch:
        assert record.usage_source == "local_count"
        assert record.output_tokens > 0 if stream else record.output_tokens == 50
    elif "input_tokens" not in patch:
        assert record.usage_source == "provider"
        assert record.output_tokens == sound.output_tokens > 0
    assert guard.usage("patched").requests == 1
    no_leak(guard, "patched")


@pytest.mark.filterwarnings("ignore:The model 'claude-opus-4-0' is deprecated")
def test_review_opus_4_nonstreaming_default_bound_is_what_the_sdk_accepts(fake) -> None:
    guard, client = make(fake, Policy(loop_limit=None))
    client.messages.create(model="claude-opus-4-0", messages=HI)
    assert fake.message_requests[-1].json["max_tokens"] == 8192


def test_review_a_model_404_on_count_does_not_turn_exact_counting_off(fake) -> None:
    guard, client = make(fake, Policy(loop_limit=None))
    fake.enqueue_error(404, message="model: claude-nonexistent", endpoint="count_tokens")
    client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    other = [{"role": "user", "content": "something else"}]
    client.messages.create(model=MODEL, max_tokens=100, messages=other)
    assert len(fake.count_requests) == 2  # still counting exactly after the model 404


def test_review_the_count_has_a_deadline(fake) -> None:
    import time

    guard, client = make(fake, Policy(loop_limit=None))
    fake.enqueue_delay(5, endpoint="count_tokens")
    started = time.monotonic()
    out = client.messages.create(model=MODEL, max_tokens=100, messages=HI, timeout=0.5)
    assert out.content and time.monotonic() - started < 4  # the estimate was used
    assert guard.usage("default").requests == 1
    fake.reset()


def test_review_web_searches_are_reserved_and_settled_at_their_price(fake) -> None:
    search_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, Policy(loop_limit=None), sinks=[records.append])
    fake.usage_patch = {"server_tool_use": {"web_search_requests": 3}}
    try:
        client.messages.create(model=MODEL, max_tokens=100, messages=HI, tools=[search_tool])
    finally:
        fake.usage_patch = None
    record = records[-1]
    tokens_only = guardrail.estimate_cost(MODEL, record.input_tokens, record.output_tokens)
    assert record.cost_usd == tokens_only + Decimal("0.03")  # $10 per 1,000 searches
    assert record.reserved_usd >= tokens_only + Decimal("0.05")  # max_uses reserved
    # A cap with room for the tokens but not for five searches refuses before sending.
    tight, tight_client = make(fake, Policy(daily_spend_usd=Decimal("0.02"), loop_limit=None))
    sent = len(fake.message_requests)
    with pytest.raises(guardrail.BudgetExceeded):
        tight_client.messages.create(model=MODEL, max_tokens=100, messages=HI, tools=[search_tool])
    assert len(fake.message_requests) == sent


@pytest.mark.parametrize("where", ["parameter", "extra_body"])
def test_review_fast_mode_is_refused_rather_than_underpriced(fake, where) -> None:
    # extra_body is how a release without the parameter sends it: read as sent, too.
    takes = "speed" in inspect.signature(anthropic.resources.messages.Messages.create).parameters
    as_parameter = where == "parameter" and takes  # else this SDK sends it in extra_body only
    request: dict[str, Any] = (
        {"speed": "fast"} if as_parameter else {"extra_body": {"speed": "fast"}}
    )
    # Under a money limit the reservation could not bound it: refused, nothing sent.
    guard, client = make(fake, Policy(daily_spend_usd=5, loop_limit=None))
    with pytest.raises(guardrail.UnpricedOption, match="speed='fast'"):
        client.messages.create(model=MODEL, max_tokens=100, messages=HI, **request)
    assert fake.message_requests == []
    # Without one it goes through, counted, with an unknown cost (as an unpriced model).
    records: list[guardrail.UsageRecord] = []
    guard, client = make(fake, Policy(loop_limit=None), sinks=[records.append])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the once-per-option warning
        client.messages.create(model=MODEL, max_tokens=100, messages=HI, **request)
    assert len(fake.message_requests) == 1
    assert records[-1].cost_usd == 0 and records[-1].extra["cost_unknown"] is True
