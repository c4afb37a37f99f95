"""Tests of guardrail.testing.FakeOpenAIServer, driven by the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import tiktoken
from openai import AsyncOpenAI, OpenAI

from guardrail.testing import (
    DelayScript,
    DisconnectScript,
    ErrorScript,
    FakeOpenAIServer,
    ReceivedRequest,
    StreamCutScript,
    ToolCall,
)
from tests._sdk_http import cut_stream_errors, http_library, protocol_error

HTTP = http_library(openai)
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
REPLY = "The quick brown fox jumps over the lazy dog."


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=REPLY, prompt_tokens=lambda request: 11) as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


def o200k_len(text: str) -> int:
    return len(tiktoken.get_encoding("o200k_base").encode(text))


def chat(client: OpenAI, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "gpt-4o")
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.create(**kwargs)


# --------------------------------------------------------------------------- plain completions


def test_plain_completion_is_parsed_by_the_sdk(server: FakeOpenAIServer, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=MESSAGES)
    completion = raw.parse()

    assert raw.headers["x-request-id"].startswith("req_fake_")
    assert completion._request_id == raw.headers["x-request-id"]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-fake-")
    assert completion.model == "gpt-4.1-mini"
    assert isinstance(completion.created, int)
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == REPLY

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 11
    assert usage.completion_tokens == o200k_len(REPLY)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    second = chat(client)
    assert second.id != completion.id


def test_options_can_change_between_requests(server: FakeOpenAIServer, client: OpenAI) -> None:
    seen: list[dict[str, Any]] = []

    def reply(request: dict[str, Any]) -> str:
        seen.append(request)
        return f"echo: {request['messages'][-1]['content']}"

    server.reply = reply
    server.prompt_tokens = 123
    server.cached_tokens = 64
    server.reasoning_tokens = 5
    completion = chat(client, model="o3")
    assert completion.choices[0].message.content == "echo: Say hello"
    assert seen[0]["model"] == "o3"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 123
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 64
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert usage.completion_tokens == o200k_len("echo: Say hello") + 5

    server.reply = "short"
    server.prompt_tokens = lambda request: len(request["messages"])
    server.reasoning_tokens = 0
    completion = chat(client)
    assert completion.choices[0].message.content == "short"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1
    assert completion.usage.completion_tokens == o200k_len("short")


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_the_reply(
    server: FakeOpenAIServer, client: OpenAI, param: str
) -> None:
    completion = chat(client, **{param: 3})
    enc = tiktoken.get_encoding("o200k_base")
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == enc.decode(enc.encode(REPLY)[:3])
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3

    untouched = chat(client, **{param: 1000})
    assert untouched.choices[0].finish_reason == "stop"
    assert untouched.choices[0].message.content == REPLY


def test_reasoning_tokens_count_against_max_completion_tokens(
    server: FakeOpenAIServer, client: OpenAI
) -> None:
    server.reasoning_tokens = 4
    completion = chat(client, model="o4-mini", max_completion_tokens=6)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 4
    enc = tiktoken.get_encoding("o200k_base")
    assert completion.choices[0].message.content == enc.decode(enc.encode(REPLY)[:2])

    server.reasoning_tokens = 50
    starved = chat(client, model="o4-mini", max_completion_tokens=6)
    assert starved.choices[0].message.content == ""
    assert starved.usage is not None
    assert starved.usage.completion_tokens == 6


def test_completion_tokens_use_the_model_encoding(server: FakeOpenAIServer, client: OpenAI) -> None:
    text = "Größenwahn überall — 日本語のテキストです。"
    server.reply = text
    o200k = len(tiktoken.get_encoding("o200k_base").encode(text))
    cl100k = len(tiktoken.get_encoding("cl100k_base").encode(text))
    assert o200k != cl100k
    expected = {
        "gpt-4o-mini": o200k,
        "gpt-5": o200k,
        "gpt-6-preview": o200k,
        "o1": o200k,
        "some-unknown-model": o200k,
        "gpt-4": cl100k,
        "gpt-4-turbo": cl100k,
        "gpt-3.5-turbo": cl100k,
    }
    for model, tokens in expected.items():
        completion = chat(client, model=model)
        assert completion.usage is not None
        assert completion.usage.completion_tokens == tokens, model
        assert completion.choices[0].message.content == text


def test_n_choices(server: FakeOpenAIServer, client: OpenAI) -> None:
    completion = chat(client, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content == REPLY for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2 * o200k_len(REPLY)


# --------------------------------------------------------------------------- streaming


def test_stream_without_usage(server: FakeOpenAIServer, client: OpenAI) -> None:
    chunks = list(chat(client, stream=True))
    assert len(chunks) >= 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-4o" for c in chunks)
    assert all(c.usage is None for c in chunks)
    content = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(content) == o200k_len(REPLY)  # one piece per token
    assert "".join(piece or "" for piece in content) == REPLY
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]


def test_stream_with_include_usage(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.cached_tokens = 3
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 11
    assert last.usage.completion_tokens == o200k_len(REPLY)
    assert last.usage.total_tokens == 11 + o200k_len(REPLY)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 3
    assert all(c.usage is None and len(c.choices) == 1 for c in body)
    assert body[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in body) == REPLY


def test_stream_wire_format(server: FakeOpenAIServer) -> None:
    request = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 2,
    }
    response = HTTP.post(f"{server.base_url}/chat/completions", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-2])
    assert all("usage" in p and p["usage"] is None for p in payloads[:-1])
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["completion_tokens"] == 2
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
    assert len(payloads) == 1 + 2 + 1 + 1  # role, two tokens, finish, usage


def test_stream_keeps_multibyte_characters_whole(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.reply = "🦊🐕 naïve 中文"
    chunks = list(chat(client, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == "🦊🐕 naïve 中文"
    assert all("\ufffd" not in piece for piece in pieces)


# --------------------------------------------------------------------------- scripted faults


def test_429_raises_rate_limit_error_with_retry_after(
    server: FakeOpenAIServer, client: OpenAI
) -> None:
    server.enqueue_error(429, retry_after=1.5, headers={"x-ratelimit-remaining-requests": "0"})
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "1500"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.response.headers["x-request-id"].startswith("req_fake_")
    assert chat(client).choices[0].message.content == REPLY  # the script was used up


def test_explicit_retry_after_header(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_error(429, code="insufficient_quota", headers={"retry-after": "20"})
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.response.headers["retry-after"] == "20"
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"


def test_server_errors(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_error(500)
    server.enqueue_error(503, message="overloaded!")
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 500
    assert info.value.type == "server_error"
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 503
    assert "overloaded!" in info.value.message


def test_context_length_exceeded(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_error(400, code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as info:
        chat(client)
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
    assert info.value.type == "invalid_request_error"
    assert info.value.body == {
        "message": info.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def test_authentication_error(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_error(401)
    with pytest.raises(openai.AuthenticationError) as info:
        chat(client)
    assert info.value.code == "invalid_api_key"


def test_error_script_applies_to_stream_requests(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_error(429)
    with pytest.raises(openai.RateLimitError):
        chat(client, stream=True)


def test_disconnect_raises_connection_error(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_disconnect()
    with pytest.raises(openai.APIConnectionError) as info:
        chat(client)
    protocol_error(info.value, openai)
    assert chat(client).choices[0].message.content == REPLY
    assert len(server.chat_requests) == 2


def test_stream_cut_raises_while_iterating(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_stream_cut(after_chunks=3)
    received = []
    stream = chat(client, stream=True, stream_options={"include_usage": True})
    with pytest.raises(cut_stream_errors(openai)) as info:
        for chunk in stream:
            received.append(chunk)
    assert "incomplete chunked read" in str(protocol_error(info.value, openai))
    assert len(received) == 3
    assert received[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in received)
    assert len(list(chat(client, stream=True))) > 3  # the server carries on


def test_stream_cut_on_a_non_streaming_request(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue_stream_cut()
    with pytest.raises(openai.APIConnectionError):
        chat(client)


def test_scripts_are_consumed_fifo_by_chat_requests_only(
    server: FakeOpenAIServer, client: OpenAI
) -> None:
    server.enqueue(ErrorScript(500), DisconnectScript(), StreamCutScript(after_chunks=0))
    assert server.pending_scripts == [
        ErrorScript(500),
        DisconnectScript(),
        StreamCutScript(after_chunks=0),
    ]
    client.embeddings.create(model="text-embedding-3-small", input="x")
    client.models.list()
    assert len(server.pending_scripts) == 3
    with pytest.raises(openai.InternalServerError):
        chat(client)
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    with pytest.raises(cut_stream_errors(openai)):
        list(chat(client, stream=True))
    assert server.pending_scripts == []
    assert chat(client).choices[0].message.content == REPLY
    assert len(server.requests) == 6
    assert len(server.chat_requests) == 4


def test_delay_then_normal_answer(server: FakeOpenAIServer, client: OpenAI) -> None:
    server.enqueue(DelayScript(0.2))
    with pytest.raises(openai.APITimeoutError):
        chat(client, timeout=0.05)
    server.enqueue_delay(0.01)
    assert chat(client).choices[0].message.content == REPLY


def test_a_hold_answers_once_released(server: FakeOpenAIServer, client: OpenAI) -> None:
    hold = server.enqueue_hold()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, client)
        hold.wait_held()
        assert not answer.done()  # held: the request waits for the test
        hold.release()
        assert answer.result(timeout=10).choices[0].message.content == REPLY


def test_a_held_stream_falls_silent_after_its_chunks(
    server: FakeOpenAIServer, client: OpenAI
) -> None:
    hold = server.enqueue_hold(after_chunks=2)
    chunks = iter(chat(client, stream=True))
    first = [next(chunks), next(chunks)]  # sent before the hold
    with ThreadPoolExecutor(1) as pool:
        rest = pool.submit(lambda: list(chunks))
        hold.wait_held()
        assert not rest.done()
        hold.release()
        text = "".join(c.choices[0].delta.content or "" for c in first + rest.result(10))
    assert text == REPLY


def test_stop_ends_a_hold() -> None:
    server = FakeOpenAIServer(prompt_tokens=1).start()
    hold = server.enqueue_hold()
    with (
        ThreadPoolExecutor(1) as pool,
        OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c,
    ):
        answer = pool.submit(chat, c)
        hold.wait_held()
        server.stop()  # never released: the server stopping ends it
        with pytest.raises(openai.APIConnectionError):
            answer.result(timeout=10)


def test_stop_does_not_wait_for_a_delay() -> None:
    server = FakeOpenAIServer(prompt_tokens=1).start()
    server.enqueue_delay(60)
    errors: list[BaseException] = []

    def call() -> None:
        with OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
            try:
                chat(c)
            except openai.APIConnectionError as exc:
                errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.chat_requests and time.monotonic() < deadline:
        time.sleep(0.001)  # polling until the request has arrived, not papering over a race
    assert server.chat_requests
    started = time.monotonic()
    server.stop()
    thread.join(5)
    assert time.monotonic() - started < 2
    assert not thread.is_alive()
    assert len(errors) == 1


def test_enqueue_rejects_non_scripts(server: FakeOpenAIServer) -> None:
    with pytest.raises(TypeError):
        server.enqueue("500")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.enqueue_stream_cut(after_chunks=-1)


# --------------------------------------------------------------------------- recording


def test_requests_are_recorded(server: FakeOpenAIServer, client: OpenAI) -> None:
    assert server.requests == []
    chat(client, model="gpt-5", temperature=0.5, extra_headers={"X-Tenant": "acme"})
    server.enqueue_error(500)
    with pytest.raises(openai.InternalServerError):
        chat(client)

    first, second = server.requests
    assert isinstance(first, ReceivedRequest)
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer test"
    assert first.headers["x-tenant"] == "acme"
    assert first.headers["content-type"] == "application/json"
    assert first.json == {"model": "gpt-5", "messages": MESSAGES, "temperature": 0.5}
    assert json.loads(first.body) == first.json
    assert first.request_id != second.request_id
    assert second.json["model"] == "gpt-4o"
    assert server.chat_requests == [first, second]

    server.enqueue_error(500)
    server.reset()
    assert server.requests == []
    assert server.pending_scripts == []
    assert chat(client).choices[0].message.content == REPLY
    assert len(server.requests) == 1


def test_handler_failures_become_500s_and_are_recorded(
    server: FakeOpenAIServer, client: OpenAI
) -> None:
    def broken(request: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    server.reply = broken
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.type == "fake_server_error"
    assert "boom" in info.value.message
    [error] = server.errors
    assert isinstance(error, RuntimeError)


def test_invalid_chat_request_is_a_400(server: FakeOpenAIServer, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.post("/chat/completions", body={"messages": MESSAGES}, cast_to=object)
    assert len(server.chat_requests) == 1


# --------------------------------------------------------------------------- other endpoints


def test_embeddings(server: FakeOpenAIServer, client: OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 16
    assert result.data[0].embedding != result.data[1].embedding
    assert result.model == "text-embedding-3-small"
    assert result.usage.prompt_tokens == result.usage.total_tokens == 2
    as_floats = client.embeddings.create(
        model="text-embedding-3-small", input=["hello", "world"], encoding_format="float"
    )
    assert as_floats.data[0].embedding == result.data[0].embedding  # deterministic
    sized = client.embeddings.create(model="text-embedding-3-small", input=[1, 2, 3], dimensions=4)
    assert len(sized.data[0].embedding) == 4
    assert sized.usage.prompt_tokens == 3
    assert sum(v * v for v in sized.data[0].embedding) == pytest.approx(1.0, abs=1e-5)


def test_models(server: FakeOpenAIServer, client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o" in ids
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"
    server.models = ["only-me"]
    assert [m.id for m in client.models.list()] == ["only-me"]


def test_unknown_path_is_a_404_in_openai_shape(server: FakeOpenAIServer) -> None:
    response = HTTP.post(f"{server.base_url}/nope", json={})
    assert response.status_code == 404
    assert response.headers["x-request-id"].startswith("req_fake_")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == "invalid_request_error"
    assert "/v1/nope" in error["message"]
    assert server.requests[-1].path == "/v1/nope"


# --------------------------------------------------------------------------- lifecycle


def test_explicit_start_and_stop() -> None:
    server = FakeOpenAIServer(prompt_tokens=1)
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    try:
        assert server.running
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        with pytest.raises(RuntimeError):
            server.start()
        with OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
            assert chat(c).choices[0].message.content == "Hello! How can I help you today?"
            base_url = server.base_url
            server.stop()
            assert not server.running
            server.stop()  # idempotent
            with (
                OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=2) as late,
                pytest.raises(openai.APIConnectionError),
            ):
                chat(late)
            with pytest.raises(openai.APIConnectionError):
                chat(c)  # the kept-alive connection was dropped too
    finally:
        server.stop()


# --------------------------------------------------------------------------- concurrency


def test_fifty_threads(server: FakeOpenAIServer, client: OpenAI) -> None:
    barrier = threading.Barrier(50)

    def call(i: int) -> str | None:
        barrier.wait()
        stream = i % 2 == 1
        if stream:
            chunks = list(chat(client, stream=True, messages=[{"role": "user", "content": str(i)}]))
            return "".join(c.choices[0].delta.content or "" for c in chunks)
        completion = chat(client, messages=[{"role": "user", "content": str(i)}])
        return str(completion.choices[0].message.content)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(call, range(50)))
    assert results == [REPLY] * 50
    assert len(server.requests) == 50
    assert sorted(r.json["messages"][0]["content"] for r in server.requests) == sorted(
        str(i) for i in range(50)
    )
    assert len({r.request_id for r in server.requests}) == 50
    assert server.errors == []


async def test_async_client_concurrent_tasks(server: FakeOpenAIServer) -> None:
    async with AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:

        async def call(i: int) -> str | None:
            completion = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": str(i)}]
            )
            return completion.choices[0].message.content

        results = await asyncio.gather(*(call(i) for i in range(20)))
        assert results == [REPLY] * 20

        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == REPLY
    assert len(server.chat_requests) == 21


async def test_async_faults(server: FakeOpenAIServer) -> None:
    async with AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        server.enqueue_error(429, retry_after=0.25)
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert info.value.response.headers["retry-after-ms"] == "250"

        server.enqueue_disconnect()
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

        server.enqueue_stream_cut(after_chunks=2)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        received = []
        with pytest.raises(cut_stream_errors(openai)) as cut:
            async for chunk in stream:
                received.append(chunk)
        protocol_error(cut.value, openai)
        assert len(received) == 2
    assert len(server.chat_requests) == 3


# -- the Responses API and tool calls -------------------------------------------------------


def strict(server: FakeOpenAIServer) -> OpenAI:
    """A client that validates every response against the SDK's types."""
    return OpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, _strict_response_validation=True
    )


def test_responses_json_validates_and_bills_its_input(server: FakeOpenAIServer) -> None:
    server.reasoning_tokens = 5
    response = strict(server).responses.create(model="o3", input="Say hello")
    assert response.status == "completed" and response.output_text == REPLY
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage.output_tokens_details.reasoning_tokens == 5
    assert response.usage.output_tokens == 5 + len(
        tiktoken.get_encoding("o200k_base").encode(REPLY)
    )


def test_responses_stream_events_in_the_order_the_sdk_requires(server: FakeOpenAIServer) -> None:
    with strict(server).responses.stream(model="gpt-4o", input="Say hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.index("response.content_part.added") < kinds.index("response.output_text.delta")
    assert final.output_text == REPLY and final.usage.input_tokens > 0


def test_a_response_echoes_its_text_format(server: FakeOpenAIServer) -> None:
    """As the API does: langchain's structured streams read the format from the response."""
    fmt = {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": False}
    server.reply = '{"name": "Oslo"}'
    with strict(server).responses.stream(
        model="gpt-4o", input="Which city?", text={"format": fmt}
    ) as stream:
        final = stream.get_final_response()
    assert final.text is not None and final.text.format.type == "json_schema"
    plain = strict(server).responses.create(model="gpt-4o", input="Say hello")
    assert plain.text is not None and plain.text.format.type == "text"


def test_previous_response_and_conversation_history_is_billed(server: FakeOpenAIServer) -> None:
    client = strict(server)
    first = client.responses.create(model="gpt-4o", input="one")
    second = client.responses.create(model="gpt-4o", input="one", previous_response_id=first.id)
    assert second.usage.input_tokens == 2 * first.usage.input_tokens + first.usage.output_tokens
    body = {"model": "gpt-4o", "input": "one", "previous_response_id": second.id}
    counted = client.post("/responses/input_tokens", body=body, cast_to=object)
    assert counted["input_tokens"] == (
        second.usage.input_tokens + second.usage.output_tokens + first.usage.input_tokens
    )
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_nope")
    unstored = client.responses.create(model="gpt-4o", input="x", store=False)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="gpt-4o", input="x", previous_response_id=unstored.id)


def test_tool_calls_in_chat_and_responses(server: FakeOpenAIServer) -> None:
    server.reply = lambda request: [ToolCall("add", {"a": 1, "b": 2}), ToolCall("noop")]
    client = strict(server)
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["add", "noop"]
    assert json.loads(calls[0].function.arguments) == {"a": 1, "b": 2}
    streamed = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    deltas = [d for c in streamed for d in (c.choices[0].delta.tool_calls or [])]
    assert {d.function.name for d in deltas if d.function and d.function.name} == {"add", "noop"}
    response = client.responses.create(model="gpt-4o", input="add")
    assert [i.type for i in response.output] == ["function_call", "function_call"]
    with client.responses.stream(model="gpt-4o", input="add") as stream:
        final = stream.get_final_response()
    assert final.output[0].arguments == '{"a":1,"b":2}'


def test_responses_failures_and_cuts(server: FakeOpenAIServer) -> None:
    client = strict(server)
    server.enqueue_response_failure(message="broken")
    failed = client.responses.create(model="gpt-4o", input="x")
    assert failed.status == "failed" and failed.error.message == "broken"
    assert failed.usage.output_tokens == 0 and failed.usage.input_tokens > 0
    server.enqueue_error(429)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o", input="x")
    server.enqueue_stream_cut(after_chunks=2)
    with pytest.raises(cut_stream_errors(openai)):
        list(client.responses.create(model="gpt-4o", input="x", stream=True))
    with pytest.raises(openai.BadRequestError, match="max_output_tokens"):
        client.responses.create(model="gpt-4o", input="x", max_output_tokens=3)
