"""A fake OpenAI-compatible HTTP server for tests.

:class:`FakeOpenAIServer` is a real HTTP/1.1 server on ``127.0.0.1`` (an ephemeral port) that
runs in background threads. Point the real ``openai`` SDK at it and the whole stack (SDK, HTTP
client, connection pool, SSE decoding, retries) runs exactly as in production, without network
access or an API key::

    import openai
    from guardrail.testing import FakeOpenAIServer

    def test_my_code() -> None:
        with FakeOpenAIServer(reply="Hi there!", prompt_tokens=lambda request: 12) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)

            completion = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hello"}]
            )
            assert completion.choices[0].message.content == "Hi there!"
            assert completion.usage is not None and completion.usage.prompt_tokens == 12

            server.enqueue_error(429, retry_after=0.5)  # the next chat request gets a 429
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="gpt-4o", messages=[...])

            assert len(server.chat_requests) == 2

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE when ``"stream": true``),
``POST /v1/responses`` (JSON, or SSE events; ``previous_response_id`` and ``conversation``
bill the history the server kept), ``POST /v1/responses/input_tokens``,
``POST /v1/responses/compact``, ``POST /v1/embeddings``, ``GET /v1/models`` and
``GET /v1/models/{id}``. Anything else gets a 404 in OpenAI's error shape. A ``reply``
function may return :class:`ToolCall` objects instead of text, for agents' tool loops.

Faults are scripted per request with :meth:`FakeOpenAIServer.enqueue_error`,
:meth:`~FakeOpenAIServer.enqueue_disconnect`, :meth:`~FakeOpenAIServer.enqueue_stream_cut`,
:meth:`~FakeOpenAIServer.enqueue_delay` and :meth:`~FakeOpenAIServer.enqueue_hold` (or
:meth:`~FakeOpenAIServer.enqueue` with script objects). Each chat-completion or Responses
request (create or compact) consumes the oldest script, if any; other endpoints never
consume scripts. Every request that reaches the server is recorded in
:attr:`FakeOpenAIServer.requests`, including those answered by a scripted fault.

The reply configuration (``reply``, ``prompt_tokens``, ``cached_tokens``, ``reasoning_tokens``,
``models``) is plain instance attributes and can be changed between requests.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeAlias

from guardrail.testing.http import (
    SCRIPT_TYPES,
    DelayScript,
    DisconnectScript,
    ErrorScript,
    FakeHTTPServer,
    FakeServerBase,
    HoldScript,
    Script,
    StreamCutScript,
    non_negative,
    retry_headers,
)
from guardrail.testing.openai_handler import OpenAIHandler
from guardrail.testing.openai_responses import ResponseFailedScript, default_response_input_tokens
from guardrail.testing.openai_wire import (
    EMBEDDING_DIMENSIONS,
    Completion,
    ReceivedRequest,
    ToolCall,
    default_prompt_tokens,
    encode,
    split_pieces,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "EMBEDDING_DIMENSIONS",
    "DelayScript",
    "DisconnectScript",
    "ErrorScript",
    "FakeOpenAIServer",
    "HoldScript",
    "ReceivedRequest",
    "ReplyFunc",
    "Script",
    "StreamCutScript",
    "TierFunc",
    "TokenCountFunc",
    "ToolCall",
    "default_prompt_tokens",
]

ReplyFunc: TypeAlias = Callable[[dict[str, Any]], "str | ToolCall | list[ToolCall]"]
"""Computes the assistant's reply from the parsed request body: text, or tool calls."""

TokenCountFunc: TypeAlias = Callable[[dict[str, Any]], int]
"""Computes ``usage.prompt_tokens`` from the parsed request body."""

TierFunc: TypeAlias = Callable[[dict[str, Any]], str]
"""Chooses the ``service_tier`` a response reports, from the parsed request body."""

DEFAULT_MODELS: Final[tuple[str, ...]] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "o3",
    "o4-mini",
    "gpt-4",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
"""Model ids listed by ``GET /v1/models`` unless ``models=`` is given."""

DEFAULT_REPLY: Final = "Hello! How can I help you today?"


class _HTTPServer(FakeHTTPServer):
    fake: FakeOpenAIServer
    handler = OpenAIHandler
    request_queue_size = 1024


class FakeOpenAIServer(FakeServerBase[ReceivedRequest]):
    """An OpenAI-compatible HTTP server on ``127.0.0.1`` for tests.

    Args:
        reply: The assistant's reply, or a function computing it from the request body.
        prompt_tokens: ``usage.prompt_tokens``: an int, or a function of the request body.
            The default counts with :func:`guardrail.counting.messages.count_messages`.
        cached_tokens: ``usage.prompt_tokens_details.cached_tokens``, reported verbatim.
        reasoning_tokens: ``usage.completion_tokens_details.reasoning_tokens``; they are added
            to ``completion_tokens`` and, like the real API, count against
            ``max_completion_tokens`` / ``max_tokens`` (the visible reply is cut to what is
            left, with ``finish_reason="length"``).
        models: The model ids listed by ``GET /v1/models``.
        stream_usage: When False, a stream never sends its usage chunk, even when asked
            (``stream_options={"include_usage": True}``): a provider that omits it.
        service_tier: The processing tier a chat completion or response reports (its
            ``service_tier``) when the request names none or ``"auto"``: the project's
            default tier. ``"priority"`` plays a project whose default is Priority
            processing. A request's own tier is reported as asked (``"fast"`` as
            ``"priority"``, as the real API does). Or a function of the request body
            that returns the tier to report, whatever was asked (a Priority request
            served at the default tier past its ramp limit, say).
        host: The address to listen on.

    ``completion_tokens`` is the tiktoken length of the reply (``o200k_base`` for gpt-4o,
    gpt-4.1, o-series and gpt-5 or later; ``cl100k_base`` for gpt-4 and gpt-3.5) plus
    ``reasoning_tokens``, times ``n``. All options are public attributes and may be changed
    while the server runs.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    _name = "FakeOpenAIServer"
    _server_class = _HTTPServer

    def __init__(
        self,
        reply: str | ReplyFunc = DEFAULT_REPLY,
        *,
        prompt_tokens: int | TokenCountFunc = default_prompt_tokens,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        models: Iterable[str] = DEFAULT_MODELS,
        stream_usage: bool = True,
        service_tier: str | TierFunc = "default",
        host: str = "127.0.0.1",
    ) -> None:
        self.reply: str | ReplyFunc = reply
        self.prompt_tokens: int | TokenCountFunc = prompt_tokens
        self.cached_tokens: int = cached_tokens
        self.reasoning_tokens: int = reasoning_tokens
        self.models: list[str] = list(models)
        self.stream_usage: bool = stream_usage
        self.service_tier: str | TierFunc = service_tier
        super().__init__(host, ("chat",))
        self._errors: list[BaseException] = []
        self._completion_ids = itertools.count(1)
        # What each stored response, and each conversation, left in its context (tokens).
        self._contexts: dict[str, int] = {}
        self._conversations: dict[str, int] = {}

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._httpd is not None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: pass it as ``OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    # ----------------------------------------------------------------- scripts

    def enqueue(self, *scripts: Script) -> None:
        """Queue scripts; each following chat-completion request consumes the oldest one."""
        for script in scripts:
            if not isinstance(script, (*SCRIPT_TYPES, ResponseFailedScript)):
                raise TypeError(f"not a FakeOpenAIServer script: {script!r}")
        self._enqueue("chat", *scripts)

    def enqueue_error(
        self,
        status: int,
        *,
        code: str | None = None,
        message: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next chat request with HTTP ``status`` and an OpenAI error body.

        ``retry_after`` (seconds) sets both ``retry-after`` (rounded up) and
        ``retry-after-ms``; ``headers`` adds any other response header.
        """
        all_headers = retry_headers(headers, retry_after)
        if retry_after is not None:
            all_headers.setdefault("retry-after-ms", str(round(retry_after * 1000)))
        self.enqueue(ErrorScript(status, code, message, type, param, all_headers))

    def enqueue_response_failure(
        self, code: str = "server_error", message: str = "The model failed to generate a response."
    ) -> None:
        """Answer the next Responses request with ``status: "failed"`` (``response.failed``
        when streamed): the input is billed, nothing is output."""
        self.enqueue(ResponseFailedScript(code, message))  # type: ignore[arg-type]  # its own kind

    def enqueue_disconnect(self) -> None:
        """Close the connection of the next chat request without responding."""
        self.enqueue(DisconnectScript())

    def enqueue_stream_cut(self, after_chunks: int = 1) -> None:
        """Send ``after_chunks`` SSE chunks of the next chat request, then drop the connection."""
        non_negative(after_chunks, "after_chunks")
        self.enqueue(StreamCutScript(after_chunks))

    def enqueue_delay(self, seconds: float) -> None:
        """Answer the next chat request normally, but only after ``seconds``."""
        non_negative(seconds, "seconds")
        self.enqueue(DelayScript(seconds))

    def enqueue_hold(self, after_chunks: int = 0) -> HoldScript:
        """Hold the answer to the next chat request until the returned script's
        ``release()`` (a provider still working): ``script.wait_held()`` returns once the
        request waits. A stream sends ``after_chunks`` chunks first, then falls silent."""
        non_negative(after_chunks, "after_chunks")
        script = HoldScript(after_chunks)
        self.enqueue(script)
        return script

    @property
    def pending_scripts(self) -> list[Script]:
        """Scripts not consumed yet, oldest first."""
        with self._lock:
            return list(self._scripts["chat"])

    # ----------------------------------------------------------------- records

    @property
    def chat_requests(self) -> list[ReceivedRequest]:
        """The received ``POST /v1/chat/completions`` requests."""
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.path.rstrip("/") == "/v1/chat/completions"
        ]

    @property
    def response_requests(self) -> list[ReceivedRequest]:
        """The received ``POST /v1/responses`` requests (create, not count or compact)."""
        return [
            r for r in self.requests if r.method == "POST" and r.path.rstrip("/") == "/v1/responses"
        ]

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised while answering (e.g. by a ``reply`` or ``prompt_tokens`` function).

        Each one was also answered with a 500 whose error type is ``fake_server_error``.
        """
        with self._lock:
            return list(self._errors)

    def reset(self) -> None:
        """Forget recorded requests and errors and drop pending scripts."""
        with self._lock:
            self._requests.clear()
            self._scripts["chat"].clear()
            self._errors.clear()
            self._contexts.clear()
            self._conversations.clear()

    # ----------------------------------------------------------------- internals

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _next_request_id(self) -> str:
        return self._next_id("req_fake_")

    def _prompt_tokens_for(self, request: dict[str, Any], endpoint: str = "chat") -> int:
        counter = self.prompt_tokens
        if counter is default_prompt_tokens and endpoint == "responses":
            counter = default_response_input_tokens
        return int(counter(request) if callable(counter) else counter)

    def _billed_tier(self, request: dict[str, Any]) -> str:
        """The ``service_tier`` a response to ``request`` reports."""
        if callable(self.service_tier):
            return self.service_tier(request)
        asked = request.get("service_tier")
        if not isinstance(asked, str) or asked == "auto":
            return self.service_tier
        return "priority" if asked == "fast" else asked

    def _encode_for(self, text: str, model: str) -> list[int]:
        return encode(text, model)[1]

    def _complete(
        self, request: dict[str, Any], model: str, limit: int | None, n: int, endpoint: str = "chat"
    ) -> Completion:
        """The reply to ``request`` (text or tool calls), cut at ``limit`` output tokens
        (reasoning included), with its usage in Chat Completions' shape."""
        reply = self.reply
        said = reply(request) if callable(reply) else reply
        calls: tuple[ToolCall, ...] = ()
        if isinstance(said, ToolCall):
            said = [said]
        if isinstance(said, list | tuple):
            if not said or not all(isinstance(c, ToolCall) for c in said):
                raise TypeError("reply must return a str, a ToolCall or a list of ToolCalls")
            calls, text = tuple(said), ""
        elif isinstance(said, str):
            text = said
        else:
            raise TypeError(f"reply must return a str, got {type(said).__name__}")
        enc, tokens = encode(text, model)
        if calls:  # billed like any output: the name and arguments the model wrote
            tokens = [t for c in calls for t in encode(c.name + c.arguments_json, model)[1]]
        reasoning = self.reasoning_tokens
        finish_reason = "tool_calls" if calls else "stop"
        if limit is not None and reasoning + len(tokens) > limit:
            finish_reason = "length"
            reasoning = min(reasoning, limit)
            tokens = tokens[: limit - reasoning]
        pieces = [] if calls else split_pieces(enc, tokens)

        prompt = self._prompt_tokens_for(request, endpoint)
        completion_tokens = (len(tokens) + reasoning) * n
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning * n,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        with self._lock:
            number = next(self._completion_ids)
        return Completion(
            id=f"chatcmpl-fake-{number}",
            created=int(time.time()),
            model=model,
            pieces=pieces,
            content="".join(pieces),
            finish_reason=finish_reason,
            usage=usage,
            tool_calls=calls,
            call_ids=tuple(f"call_fake_{number}_{i}" for i in range(len(calls))),
            prompt_tokens=prompt,
            output_tokens=len(tokens) + reasoning,
            reasoning_tokens=reasoning,
        )
