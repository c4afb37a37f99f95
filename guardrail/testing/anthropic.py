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
from typing import Any, Final, Literal, TypeAlias

from guardrail.testing.anthropic_handler import (
    AnthropicHandler,
    RecordedRequest,
    model_object,
    o200k_tokens,
    strings,
    token_pieces,
)
from guardrail.testing.http import (
    DelayScript,
    DisconnectScript,
    ErrorScript,
    FakeHTTPServer,
    FakeServerBase,
    Script,
    StreamCutScript,
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


def default_anthropic_prompt_tokens(request: dict[str, Any]) -> int:
    """A stand-in for Claude's count: ``o200k_base`` tokens of every string in ``system``,
    ``messages`` and ``tools``, 4 per message, 1,600 per image, 3,000 per document."""
    total = 4
    parts: list[Any] = [request.get("system"), request.get("tools")]
    for message in request.get("messages") or []:
        total += 4
        parts.append(message)
    for part in parts:
        for text in strings(part):
            total += len(o200k_tokens(text))
    blob = json.dumps(request.get("messages"))
    return total + 1600 * blob.count('"image"') + 3000 * blob.count('"document"')


class _HTTPServer(FakeHTTPServer):
    fake: FakeAnthropicServer
    handler = AnthropicHandler


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
            provider answering malformed usage (negative or missing counts), or more of it
            (``server_tool_use``, ``iterations``: ``message_delta`` carries them too).
        inference_geo: The workspace's default geo: every message's ``usage.inference_geo``
            is the request's ``inference_geo``, or this when the request names none (in
            the JSON body and ``message_start``). None: reported only when the request
            names one.

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
        inference_geo: str | None = None,
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
        self.inference_geo = inference_geo
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
        data = [model_object(name) for name in self.models]
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
        thinking_tokens = o200k_tokens(self.thinking) if self.thinking is not None else []
        thinking_tokens = thinking_tokens[:limit]
        text_tokens = o200k_tokens(text)[: limit - len(thinking_tokens)]
        stop_reason = "end_turn"
        if len(thinking_tokens) + len(o200k_tokens(text)) > limit:
            stop_reason = "max_tokens"
        pieces: list[tuple[str, list[str]]] = []
        content: list[dict[str, Any]] = []
        if self.thinking is not None:
            thought = token_pieces(thinking_tokens, self.tokens_per_delta)
            pieces.append(("thinking", thought))
            content.append(
                {"type": "thinking", "thinking": "".join(thought), "signature": "c2lnbmF0dXJl"}
            )
        said = token_pieces(text_tokens, self.tokens_per_delta)
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
        geo = request.get("inference_geo") or self.inference_geo
        if geo is not None:
            usage["inference_geo"] = geo
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
