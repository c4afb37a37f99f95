"""A malformed delta the bare SDK passes through (a tool call's name or arguments, a text,
thinking or partial JSON that is not a string) is passed through the guarded stream too:
it is not text, so it is not counted, and it never fails the stream with a request error
(through the gateway, reported as budget_exceeded). Found by a review."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import anthropic
import openai
import pytest

import guardrail
from guardrail import Guard, Policy

HELLO = [{"role": "user", "content": "Hello there"}]


class _SSE(http.server.BaseHTTPRequestHandler):
    events: ClassVar[list[tuple[str | None, dict[str, Any] | str]]] = []
    protocol_version = "HTTP/1.0"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for name, data in self.events:
            head = f"event: {name}\n".encode() if name else b""
            body = data if isinstance(data, str) else json.dumps(data)
            self.wfile.write(head + b"data: " + body.encode() + b"\n\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def sse_upstream(events: list[tuple[str | None, dict[str, Any] | str]]) -> Iterator[str]:
    handler = type("H", (_SSE,), {"events": events})
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{upstream.server_address[1]}"
    finally:
        upstream.shutdown()


def _anthropic_events(bad: dict[str, Any]) -> list[tuple[str | None, dict[str, Any] | str]]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        bad,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
    return [(e["type"], e) for e in events]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 7}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": {"a": 1}},
        },
    ],
    ids=["text-not-a-string", "partial_json-not-a-string"],
)
def test_anthropic_malformed_event_is_passed_through(bad) -> None:
    with sse_upstream(_anthropic_events(bad)) as url:
        bare = anthropic.Anthropic(base_url=url, api_key="t", max_retries=0)
        seen_bare = [
            e.type
            for e in bare.messages.create(
                model="claude-haiku-4-5", max_tokens=50, messages=HELLO, stream=True
            )
        ]
        records: list[guardrail.UsageRecord] = []
        guard = Guard(Policy(loop_limit=None), sinks=[records.append])
        client = guard.wrap(bare, exact_count=False)
        seen = [
            e.type
            for e in client.messages.create(
                model="claude-haiku-4-5", max_tokens=50, messages=HELLO, stream=True
            )
        ]
    assert seen == seen_bare
    assert records[-1].outcome == "stream_completed"
    assert guard.usage("default").reserved_usd == 0


def _chat_events(delta: dict[str, Any]) -> list[tuple[str | None, dict[str, Any] | str]]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {**base, "choices": [{"index": 0, "delta": delta}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        },
    ]
    return [*((None, c) for c in chunks), (None, "[DONE]")]


@pytest.mark.parametrize(
    "delta",
    [
        {"content": 42},
        {"tool_calls": [{"index": 0, "function": {"name": 5, "arguments": {"a": 1}}}]},
    ],
    ids=["content-not-a-string", "tool-call-fields-not-strings"],
)
def test_chat_malformed_delta_is_passed_through(delta) -> None:
    with sse_upstream(_chat_events(delta)) as url:
        bare = openai.OpenAI(base_url=f"{url}/v1", api_key="t", max_retries=0)
        n_bare = len(
            list(bare.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
        )
        records: list[guardrail.UsageRecord] = []
        guard = Guard(Policy(loop_limit=None), sinks=[records.append])
        client = guard.wrap(bare)
        n = len(list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)))
    assert n == n_bare - 1  # everything but the usage chunk the guard asked for
    assert records[-1].outcome == "stream_completed"
    assert guard.usage("default").reserved_usd == 0
