"""A fake Anthropic Messages API server for tests (re-exported by :mod:`guardrail.testing`).

:class:`FakeAnthropicServer` is a real HTTP/1.1 server on ``127.0.0.1`` (an ephemeral port),
served from background threads. Point the real ``anthropic`` SDK at it and the whole stack
(SDK, HTTP client, SSE decoding, retries) runs as in production, offline::

    import anthropic
    from guardrail.testing import FakeAnthropicServer

    with FakeAnthropicServer(reply="Hi there!", prompt_tokens=12) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )
        assert message.content[0].text == "Hi there!"
        assert message.usage.input_tokens == 12

        server.enqueue_error(529)  # the next Messages request is "overloaded"
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(...)
        assert len(server.message_requests) == 2

Endpoints: ``POST /v1/messages`` (JSON, or server-sent events when ``"stream": true``:
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta``, ``message_stop``), ``POST
/v1/messages/count_tokens``, ``GET /v1/models`` and ``GET /v1/models/{id}``. Anything else
gets a 404 in Anthropic's error shape.

Usage: ``prompt_tokens`` is the whole prompt (what ``count_tokens`` answers); a message's
``usage.input_tokens`` is what is left of it after ``cache_read_input_tokens`` and the
cache writes (``cache_write_5m_tokens`` + ``cache_write_1h_tokens``), as with the real API.
``output_tokens`` is the ``o200k_base`` length of the reply and of the ``thinking`` text (a
stand-in for Claude's tokenizer), cut at ``max_tokens`` with ``stop_reason="max_tokens"``,
unless a fixed number is set.

Faults are scripted per request with :meth:`~FakeAnthropicServer.enqueue_error` (429
``rate_limit_error``, 529 ``overloaded_error``, 400 ``invalid_request_error``, 500
``api_error``...), :meth:`~FakeAnthropicServer.enqueue_prompt_too_long`,
:meth:`~FakeAnthropicServer.enqueue_disconnect`,
:meth:`~FakeAnthropicServer.enqueue_stream_cut` and
:meth:`~FakeAnthropicServer.enqueue_delay` (ended early by ``stop()`` or ``reset()``).
Each script applies to the next request of its endpoint (``"messages"`` by default, or
``"count_tokens"``). Every request that reaches the server is recorded, including those
answered by a fault.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import unquote

import tiktoken

from guardrail.testing.http import (
    DelayScript,
    DisconnectScript,
    ErrorScript,
    FakeHandler,
    FakeHTTPServer,
    FakeServerBase,
    Script,
    StreamCutScript,
    dumps,
    non_negative,
    retry_headers,
)

__all__ = [
    "DEFAULT_ANTHROPIC_MODELS",
    "DEFAULT_ANTHROPIC_REPLY",
    "DROP",
    "Endpoint",
    "FakeAnthropicServer",
    "RecordedRequest",
    "default_anthropic_prompt_tokens",
]

DEFAULT_ANTHROPIC_REPLY: Final = "Hello! How can I help you today?"
DEFAULT_ANTHROPIC_MODELS: Final[tuple[str, ...]] = (
    "claude-opus-4-7",
    "claude-opus-4-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)
Endpoint: TypeAlias = Literal["messages", "count_tokens"]


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Final = _Drop()
"""A ``usage_patch`` value removing the field (also ``FakeAnthropicServer.DROP``)."""
TokenCountFunc: TypeAlias = Callable[[dict[str, Any]], int]
ReplyFunc: TypeAlias = Callable[[dict[str, Any]], str]

_ERROR_TYPES: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names."""
    json: Any
    """The parsed JSON body, or None."""
    body: bytes = b""
    request_id: str = ""


@cache
def _o200k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("o200k_base")


def _tokens(text: str) -> list[int]:
    return _o200k().encode(text, disallowed_special=())


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in ("type", "cache_control", "data", "media_type"):
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def default_anthropic_prompt_tokens(request: dict[str, Any]) -> int:
    """A stand-in for Claude's count: ``o200k_base`` tokens of every string in ``system``,
    ``messages`` and ``tools``, 4 per message, 1,600 per image, 3,000 per document."""
    total = 4
    parts: list[Any] = [request.get("system"), request.get("tools")]
    for message in request.get("messages") or []:
        total += 4
        parts.append(message)
    for part in parts:
        for text in _strings(part):
            total += len(_tokens(text))
    blob = json.dumps(request.get("messages"))
    return total + 1600 * blob.count('"image"') + 3000 * blob.count('"document"')


class _Handler(FakeHandler):
    server_version = "FakeAnthropic/1.0"
    request_id_header = "request-id"
    server: _HTTPServer

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        parsed = self._parse_json(body)
        path = unquote(self.path.partition("?")[0]).rstrip("/")
        self._request_id = fake._next_id("req_fake_")
        headers = {name.lower(): value for name, value in self.headers.items()}
        fake._record(RecordedRequest(self.command, path, headers, parsed, body, self._request_id))
        try:
            if self.command == "POST" and path == "/v1/messages":
                self._messages(parsed, fake._pop_script("messages"))
            elif self.command == "POST" and path == "/v1/messages/count_tokens":
                self._count_tokens(parsed, fake._pop_script("count_tokens"))
            elif self.command == "GET" and path == "/v1/models":
                self._send_json(200, fake._models_page())
            elif self.command == "GET" and path.startswith("/v1/models/"):
                name = path[len("/v1/models/") :]
                if name in fake.models:
                    self._send_json(200, _model_object(name))
                else:
                    self._send_error(404, "not_found_error", f"model: {name}")
            else:
                self._send_error(404, "not_found_error", f"Not found: {self.command} {path}")
        except OSError:
            self.close_connection = True

    # -- responses

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", self._request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": self._request_id,
        }
        self._send_json(status, body, headers)

    def _delay_event(self) -> threading.Event:
        return self.server.fake._wake_event()

    def _scripted_error(self, script: ErrorScript) -> None:
        default_type, default_message = _error_defaults(script.status)
        self._send_error(
            script.status,
            script.type or default_type,
            script.message or default_message,
            script.headers,
        )

    def _invalid(self, request: Any, *, needs_max_tokens: bool) -> str | None:
        if not isinstance(request, dict):
            return "The request body must be a JSON object."
        if not isinstance(request.get("model"), str) or not request["model"]:
            return "model: Field required"
        if not isinstance(request.get("messages"), list):
            return "messages: Field required"
        if needs_max_tokens:
            value = request.get("max_tokens")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return "max_tokens: Field required (a positive integer)"
        return None

    def _count_tokens(self, request: Any, script: Script | None) -> None:
        answered, _ = self._apply(script)
        if answered:
            return
        problem = self._invalid(request, needs_max_tokens=False)
        if problem is not None:
            self._send_error(400, "invalid_request_error", problem)
            return
        self._send_json(200, {"input_tokens": self.server.fake._prompt_tokens(request)})

    def _messages(self, request: Any, script: Script | None) -> None:
        answered, cut_after = self._apply(script)
        if answered:
            return
        problem = self._invalid(request, needs_max_tokens=True)
        if problem is not None:
            self._send_error(400, "invalid_request_error", problem)
            return
        fake = self.server.fake
        prompt = fake._prompt_tokens(request)
        window = fake.context_window
        if window is not None and prompt + request["max_tokens"] > window:
            self._send_error(
                400,
                "invalid_request_error",
                f"prompt is too long: {prompt} tokens > {window - request['max_tokens']} maximum",
            )
            return
        message = fake._message(request, prompt)
        if request.get("stream") is True:
            self._stream(message, cut_after)
            return
        payload = {k: v for k, v in message.items() if not k.startswith("_")}
        if cut_after is None:
            self._send_json(200, payload)
            return
        self._send_cut_json(payload)

    def _stream(self, message: dict[str, Any], cut_after: int | None) -> None:
        events = _events(message)
        self._start_event_stream()
        for sent, event in enumerate(events):
            if cut_after is not None and sent >= cut_after:
                self.close_connection = True  # no terminating chunk: an abrupt EOF
                return
            self._write_chunk(f"event: {event['type']}\ndata: ".encode() + dumps(event) + b"\n\n")
        self._end_chunks()


def _events(message: dict[str, Any]) -> list[dict[str, Any]]:
    usage = message["usage"]
    start_usage = dict(usage)
    if isinstance(usage.get("output_tokens"), int):
        start_usage["output_tokens"] = min(1, usage["output_tokens"])
    start = {**{k: v for k, v in message.items() if not k.startswith("_")}}
    start.update(content=[], stop_reason=None, stop_sequence=None, usage=start_usage)
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, (kind, pieces) in enumerate(message["_pieces"]):
        if kind == "thinking":
            block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "text", "text": ""}
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        if index == 0:
            events.append({"type": "ping"})
        for piece in pieces:
            delta = (
                {"type": "thinking_delta", "thinking": piece}
                if kind == "thinking"
                else {"type": "text_delta", "text": piece}
            )
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        if kind == "thinking":
            signature = {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}
            events.append({"type": "content_block_delta", "index": index, "delta": signature})
        events.append({"type": "content_block_stop", "index": index})
    final = {
        name: usage[name]
        for name in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
            "output_tokens_details",
        )
        if name in usage
    }
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": final,
        }
    )
    events.append({"type": "message_stop"})
    return events


def _model_object(name: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": name,
        "display_name": name.replace("-", " ").title(),
        "created_at": "2025-01-01T00:00:00Z",
    }


def _pieces(tokens: list[int], per_piece: int) -> list[str]:
    """Decode ``tokens`` a few at a time (never splitting a character)."""
    enc = _o200k()
    pieces: list[str] = []
    pending = b""
    for i, token in enumerate(tokens):
        pending += enc.decode_single_token_bytes(token)
        if (i + 1) % per_piece and i + 1 < len(tokens):
            continue
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


def _error_defaults(status: int) -> tuple[str, str]:
    """The API's error type and message for ``status`` (529 is ``overloaded_error``)."""
    return _ERROR_TYPES.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}")
    )


class _HTTPServer(FakeHTTPServer):
    fake: FakeAnthropicServer
    handler = _Handler


class FakeAnthropicServer(FakeServerBase[RecordedRequest]):
    """An Anthropic Messages API server on ``127.0.0.1`` for tests.

    Args:
        reply: The assistant's text, or a function of the request body computing it.
        prompt_tokens: The whole prompt's tokens (``count_tokens`` answers this; usage
            splits it into input, cache reads and cache writes): an int or a function of
            the request body. Default: :func:`default_anthropic_prompt_tokens`.
        cache_read_input_tokens: ``usage.cache_read_input_tokens`` of every message.
        cache_write_5m_tokens, cache_write_1h_tokens: cache writes per TTL; their sum is
            ``usage.cache_creation_input_tokens``.
        output_tokens: a fixed ``usage.output_tokens``; None counts the reply and thinking.
        thinking: text of a thinking block sent before the reply (None: no thinking).
        context_window: when set, a prompt whose tokens plus ``max_tokens`` exceed it is
            answered with the API's 400 "prompt is too long".
        tokens_per_delta: tokens of reply text per ``content_block_delta`` event.
        usage_patch: applied to every message's ``usage`` dict before it is sent (in the
            JSON body, and in ``message_start`` and ``message_delta`` when streaming): a
            mapping of fields to set, a field set to :data:`DROP` being removed. Plays a
            provider answering malformed usage (negative or missing counts).

    All options are public attributes, and may be changed while the server runs.
    ``base_url`` is what ``anthropic.Anthropic(base_url=...)`` takes.
    """

    DROP: Final = DROP
    _name = "FakeAnthropicServer"
    _server_class = _HTTPServer

    def __init__(
        self,
        reply: str | ReplyFunc = DEFAULT_ANTHROPIC_REPLY,
        *,
        prompt_tokens: int | TokenCountFunc = default_anthropic_prompt_tokens,
        cache_read_input_tokens: int = 0,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        output_tokens: int | None = None,
        thinking: str | None = None,
        context_window: int | None = None,
        tokens_per_delta: int = 3,
        usage_patch: Mapping[str, Any] | None = None,
        models: Iterable[str] = DEFAULT_ANTHROPIC_MODELS,
        host: str = "127.0.0.1",
    ) -> None:
        self.reply: str | ReplyFunc = reply
        self.prompt_tokens: int | TokenCountFunc = prompt_tokens
        self.cache_read_input_tokens = cache_read_input_tokens
        self.cache_write_5m_tokens = cache_write_5m_tokens
        self.cache_write_1h_tokens = cache_write_1h_tokens
        self.output_tokens = output_tokens
        self.thinking = thinking
        self.context_window = context_window
        self.tokens_per_delta = tokens_per_delta
        self.usage_patch: Mapping[str, Any] | None = usage_patch
        self.models: list[str] = list(models)
        super().__init__(host, ("messages", "count_tokens"))
        self._wake = threading.Event()  # ends scripted delays (stop or reset)

    # -- lifecycle

    def _stopping(self) -> None:
        self._wake_all()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the SDK adds ``/v1/messages`` itself."""
        return f"http://{self.host}:{self.port}"

    # -- scripts

    def _enqueue_for(self, script: Script, endpoint: Endpoint) -> None:
        if endpoint not in self._scripts:
            raise ValueError(f"endpoint must be 'messages' or 'count_tokens', got {endpoint!r}")
        self._enqueue(endpoint, script)

    def enqueue_error(
        self,
        status: int,
        *,
        type: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        endpoint: Endpoint = "messages",
    ) -> None:
        """Answer the next request of ``endpoint`` with HTTP ``status`` and Anthropic's error
        body (``type`` and ``message`` default to the API's for that status; 529 is
        ``overloaded_error``). ``retry_after`` sets the ``retry-after`` header (seconds)."""
        script = ErrorScript(
            status, message=message, type=type, headers=retry_headers(headers, retry_after)
        )
        self._enqueue_for(script, endpoint)

    def enqueue_prompt_too_long(self, tokens: int = 210_000, maximum: int = 200_000) -> None:
        """The API's answer to an oversized prompt: a 400 ``invalid_request_error`` with no
        error code, only a message."""
        self.enqueue_error(400, message=f"prompt is too long: {tokens} tokens > {maximum} maximum")

    def enqueue_disconnect(self, *, endpoint: Endpoint = "messages") -> None:
        """Close the connection of the next request without answering."""
        self._enqueue_for(DisconnectScript(), endpoint)

    def enqueue_stream_cut(self, after_events: int = 3) -> None:
        """Send ``after_events`` events of the next streamed message, then drop the connection
        (a non-streaming one gets half its JSON body)."""
        non_negative(after_events, "after_events")
        self._enqueue_for(StreamCutScript(after_events), "messages")

    def enqueue_delay(self, seconds: float, *, endpoint: Endpoint = "messages") -> None:
        """Answer the next request normally, after ``seconds`` (or when the server stops)."""
        non_negative(seconds, "seconds")
        self._enqueue_for(DelayScript(seconds), endpoint)

    # -- records

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """The ``POST /v1/messages`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def count_requests(self) -> list[RecordedRequest]:
        """The ``POST /v1/messages/count_tokens`` requests."""
        return [r for r in self.requests if r.path == "/v1/messages/count_tokens"]

    def reset(self) -> None:
        """Forget recorded requests, drop pending scripts, end delays in progress (their
        connections are closed without an answer)."""
        with self._lock:
            self._requests.clear()
            for queue in self._scripts.values():
                queue.clear()
        self._wake_all()

    # -- internals

    def _wake_event(self) -> threading.Event:
        with self._lock:
            return self._wake

    def _wake_all(self) -> None:
        with self._lock:
            wake, self._wake = self._wake, threading.Event()
        wake.set()

    def _models_page(self) -> dict[str, Any]:
        data = [_model_object(name) for name in self.models]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def _prompt_tokens(self, request: dict[str, Any]) -> int:
        counter = self.prompt_tokens
        return int(counter(request) if callable(counter) else counter)

    def _message(self, request: dict[str, Any], prompt: int) -> dict[str, Any]:
        reply = self.reply
        text = reply(request) if callable(reply) else reply
        limit = int(request["max_tokens"])
        thinking_tokens = _tokens(self.thinking) if self.thinking is not None else []
        thinking_tokens = thinking_tokens[:limit]
        text_tokens = _tokens(text)[: limit - len(thinking_tokens)]
        stop_reason = "end_turn"
        if len(thinking_tokens) + len(_tokens(text)) > limit:
            stop_reason = "max_tokens"
        pieces: list[tuple[str, list[str]]] = []
        content: list[dict[str, Any]] = []
        if self.thinking is not None:
            thought = _pieces(thinking_tokens, self.tokens_per_delta)
            pieces.append(("thinking", thought))
            content.append(
                {"type": "thinking", "thinking": "".join(thought), "signature": "c2lnbmF0dXJl"}
            )
        said = _pieces(text_tokens, self.tokens_per_delta)
        pieces.append(("text", said))
        content.append({"type": "text", "text": "".join(said)})
        read, w5, w1 = (
            self.cache_read_input_tokens,
            self.cache_write_5m_tokens,
            self.cache_write_1h_tokens,
        )
        output = self.output_tokens
        if output is None:
            output = len(thinking_tokens) + len(text_tokens)
        usage: dict[str, Any] = {
            "input_tokens": max(0, prompt - read - w5 - w1),
            "cache_creation_input_tokens": w5 + w1,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": w5,
                "ephemeral_1h_input_tokens": w1,
            },
            "output_tokens": output,
            "service_tier": "standard",
        }
        if thinking_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": len(thinking_tokens)}
        for name, value in (self.usage_patch or {}).items():
            if value is DROP:
                usage.pop(name, None)
            else:
                usage[name] = value
        return {
            "id": self._next_id("msg_fake_"),
            "type": "message",
            "role": "assistant",
            "model": request["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
            "_pieces": pieces,
        }
