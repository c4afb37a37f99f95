"""guardrail.testing.FakeAnthropicServer, driven by the real ``anthropic`` SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from guardrail.testing import FakeAnthropicServer
from tests._sdk_http import OVERLOADED, http_library, thinking_tokens

MODEL = "claude-haiku-4-5"
HI = [{"role": "user", "content": "Hi"}]


def sdk(server: FakeAnthropicServer, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0, **kw)


def test_message_json_and_usage_split(fake: FakeAnthropicServer) -> None:
    fake.reply = "Bonjour!"
    fake.prompt_tokens = 1400
    fake.cache_read_input_tokens = 1000
    fake.cache_write_5m_tokens = 100
    fake.cache_write_1h_tokens = 200
    message = sdk(fake).messages.create(model=MODEL, max_tokens=50, messages=HI)
    assert message.content[0].type == "text" and message.content[0].text == "Bonjour!"
    assert message.stop_reason == "end_turn" and message.model == MODEL
    usage = message.usage
    assert usage.input_tokens == 100  # what is left after cache reads and writes
    assert usage.cache_read_input_tokens == 1000
    assert usage.cache_creation_input_tokens == 300
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 100
    assert usage.cache_creation.ephemeral_1h_input_tokens == 200
    assert usage.output_tokens > 0
    assert message._request_id == fake.message_requests[-1].request_id


def test_max_tokens_is_required_and_honoured(fake: FakeAnthropicServer) -> None:
    fake.reply = "word " * 100
    client = sdk(fake)
    message = client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(
            model=MODEL, max_tokens=1, messages=HI, extra_body={"max_tokens": None}
        )


def test_stream_events_in_order_with_two_part_usage(fake: FakeAnthropicServer) -> None:
    fake.thinking = "Let me think."
    fake.prompt_tokens = 30
    events = list(sdk(fake).messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2
    start, delta = events[0], events[-2]
    assert start.message.usage.input_tokens == 30 and start.message.usage.output_tokens == 1
    thinking = "".join(
        e.delta.thinking
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
    )
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert thinking == "Let me think." and text == fake.reply
    assert delta.usage.output_tokens > 1  # cumulative, thinking included
    assert delta.usage.output_tokens_details is not None
    assert thinking_tokens(delta.usage) > 0


def test_message_stream_helper_accumulates(fake: FakeAnthropicServer) -> None:
    with sdk(fake).messages.stream(model=MODEL, max_tokens=100, messages=HI) as stream:
        assert "".join(stream.text_stream) == fake.reply
        final = stream.get_final_message()
    assert final.content[0].text == fake.reply and final.usage.output_tokens > 0


def test_count_tokens_matches_the_messages_prompt(fake: FakeAnthropicServer) -> None:
    client = sdk(fake)
    request: dict[str, Any] = {"model": MODEL, "messages": HI, "system": "Be brief."}
    counted = client.messages.count_tokens(**request).input_tokens
    message = client.messages.create(max_tokens=10, **request)
    assert counted == message.usage.input_tokens > 0
    assert len(fake.count_requests) == 1 and len(fake.message_requests) == 1
    assert fake.count_requests[0].json["system"] == "Be brief."


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, OVERLOADED, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_scripted_errors_in_anthropic_shape(fake, status, error, kind) -> None:
    fake.enqueue_error(status, retry_after=2)
    with pytest.raises(error) as info:
        sdk(fake).messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert info.value.status_code == status and info.value.type == kind
    assert info.value.response.headers["retry-after"] == "2"
    sdk(fake).messages.create(model=MODEL, max_tokens=10, messages=HI)  # the script was used up


def test_prompt_too_long_is_a_400_without_a_code(fake: FakeAnthropicServer) -> None:
    fake.enqueue_prompt_too_long()
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(fake).messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert "prompt is too long" in str(info.value)
    assert getattr(info.value, "error_code", None) is None
    fake.context_window = 20  # the same answer from a configured window
    fake.prompt_tokens = 15
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        sdk(fake).messages.create(model=MODEL, max_tokens=10, messages=HI)


def test_scripts_are_per_endpoint(fake: FakeAnthropicServer) -> None:
    fake.enqueue_error(500, endpoint="count_tokens")
    client = sdk(fake)
    client.messages.create(model=MODEL, max_tokens=10, messages=HI)  # not consumed here
    with pytest.raises(anthropic.InternalServerError):
        client.messages.count_tokens(model=MODEL, messages=HI)
    with pytest.raises(ValueError, match="endpoint"):
        fake.enqueue_error(500, endpoint="models")  # type: ignore[arg-type]


def test_disconnect_stream_cut_and_half_a_body(fake: FakeAnthropicServer) -> None:
    client = sdk(fake)
    fake.enqueue_disconnect()
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=10, messages=HI)
    fake.enqueue_stream_cut(after_events=2)
    got = []
    with pytest.raises(http_library(anthropic).RemoteProtocolError):
        for event in client.messages.create(model=MODEL, max_tokens=10, messages=HI, stream=True):
            got.append(event.type)
    assert got == ["message_start", "content_block_start"]
    fake.enqueue_stream_cut()
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert len(fake.message_requests) == 3  # faults are recorded too


def test_models_and_unknown_paths(fake: FakeAnthropicServer) -> None:
    client = sdk(fake)
    assert [m.id for m in client.models.list()] == fake.models
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nonexistent")


async def test_async_sdk_and_delay_ended_by_stop() -> None:
    server = FakeAnthropicServer().start()
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="t", max_retries=0)
    message = await client.messages.create(model=MODEL, max_tokens=10, messages=HI)
    assert message.content[0].text == server.reply
    server.enqueue_delay(60)
    task = asyncio.create_task(client.messages.create(model=MODEL, max_tokens=10, messages=HI))
    while len(server.message_requests) < 2:
        await asyncio.sleep(0.005)
    server.stop()  # ends the delay and drops the connection at once
    with pytest.raises(anthropic.APIConnectionError):
        await task
    await client.close()
