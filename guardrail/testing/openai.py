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
``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{id}``. Anything else gets a
404 in OpenAI's error shape.

Faults are scripted per request with :meth:`FakeOpenAIServer.enqueue_error`,
:meth:`~FakeOpenAIServer.enqueue_disconnect`, :meth:`~FakeOpenAIServer.enqueue_stream_cut` and
:meth:`~FakeOpenAIServer.enqueue_delay` (or :meth:`~FakeOpenAIServer.enqueue` with script
objects). Each chat-completion request consumes the oldest script, if any; other endpoints
never consume scripts. Every request that reaches the server is recorded in
:attr:`FakeOpenAIServer.requests`, including those answered by a scripted fault.

The reply configuration (``reply``, ``prompt_tokens``, ``cached_tokens``, ``reasoning_tokens``,
``models``) is plain instance attributes and can be changed between requests.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

import tiktoken

from guardrail.testing.http import (
    SCRIPT_TYPES,
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
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "EMBEDDING_DIMENSIONS",
    "DelayScript",
    "DisconnectScript",
    "ErrorScript",
    "FakeOpenAIServer",
    "ReceivedRequest",
    "ReplyFunc",
    "Script",
    "StreamCutScript",
    "TokenCountFunc",
    "default_prompt_tokens",
]

ReplyFunc: TypeAlias = Callable[[dict[str, Any]], str]
"""Computes the assistant's reply from the parsed request body."""

TokenCountFunc: TypeAlias = Callable[[dict[str, Any]], int]
"""Computes ``usage.prompt_tokens`` from the parsed request body."""

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
EMBEDDING_DIMENSIONS: Final = 16
"""Length of embedding vectors when the request does not set ``dimensions``."""

_FINGERPRINT: Final = "fp_fake"


# --------------------------------------------------------------------------- records & scripts


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    """The path without the query string, e.g. ``"/v1/chat/completions"``."""
    headers: dict[str, str]
    """Request headers with lower-case names (repeated headers joined with ``", "``)."""
    json: Any
    """The parsed JSON body, or ``None`` when there was no body or it was not valid JSON."""
    body: bytes = b""
    query: str = ""
    request_id: str = ""
    """The ``x-request-id`` the server answered (or would have answered) with."""


# --------------------------------------------------------------------------- token accounting


def default_prompt_tokens(request_json: dict[str, Any]) -> int:
    """Count prompt tokens with :func:`guardrail.count_messages` (imported lazily)."""
    from guardrail.counting.messages import count_messages

    return int(
        count_messages(
            request_json.get("messages", []),
            request_json.get("model", ""),
            tools=request_json.get("tools"),
        )
    )


_O200K_PREFIXES: Final = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-6",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
)
_CL100K_PREFIXES: Final = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")


def _encoding_name(model: str) -> str:
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def _encode(text: str, model: str) -> tuple[tiktoken.Encoding, list[int]]:
    enc = _encoding(_encoding_name(model))
    return enc, enc.encode(text, disallowed_special=())


def _split_pieces(enc: tiktoken.Encoding, tokens: Sequence[int]) -> list[str]:
    """Decode ``tokens`` into one string per token (tokens that split a character are merged)."""
    pieces: list[str] = []
    pending = b""
    for token in tokens:
        pending += enc.decode_single_token_bytes(token)
        try:
            piece = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces.append(piece)
        pending = b""
    if pending:
        pieces.append(pending.decode("utf-8", errors="replace"))
    return pieces


# --------------------------------------------------------------------------- error bodies

_STATUS_DEFAULTS: Final[dict[int, tuple[str, str, str | None]]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("permission_error", "You are not allowed to perform this request.", None),
    404: ("invalid_request_error", "The requested resource does not exist.", None),
    409: ("invalid_request_error", "The request conflicts with another request.", None),
    422: ("invalid_request_error", "The request could not be processed.", None),
    429: (
        "requests",
        "Rate limit reached for requests. Please try again later.",
        "rate_limit_exceeded",
    ),
    500: (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
        None,
    ),
    502: ("server_error", "Bad gateway.", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
    504: ("server_error", "Gateway timeout.", None),
}

_CODE_DEFAULTS: Final[dict[str, tuple[str, str, str | None]]] = {
    "context_length_exceeded": (
        "invalid_request_error",
        "This model's maximum context length was exceeded. "
        "Please reduce the length of the messages.",
        "messages",
    ),
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
        None,
    ),
    "invalid_api_key": ("invalid_request_error", "Incorrect API key provided.", None),
    "model_not_found": ("invalid_request_error", "The model does not exist.", "model"),
}


def _error_body(
    status: int,
    *,
    code: str | None,
    message: str | None,
    type: str | None,
    param: str | None,
) -> dict[str, Any]:
    if status in _STATUS_DEFAULTS:
        default_type, default_message, default_code = _STATUS_DEFAULTS[status]
    else:
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        default_message, default_code = f"HTTP error {status}.", None
    if code is None:
        code = default_code
    default_param: str | None = None
    if code is not None and code in _CODE_DEFAULTS:
        default_type, default_message, default_param = _CODE_DEFAULTS[code]
    return {
        "error": {
            "message": default_message if message is None else message,
            "type": default_type if type is None else type,
            "param": default_param if param is None else param,
            "code": code,
        }
    }


# --------------------------------------------------------------------------- HTTP machinery


class _Handler(FakeHandler):
    server_version = "FakeOpenAI/1.0"
    server: _HTTPServer

    # ----------------------------------------------------------------- plumbing

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return super()._read_body()

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        parsed = self._parse_json(body)
        path, _, query = self.path.partition("?")
        path = unquote(path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self._request_id = fake._next_request_id()
        record = ReceivedRequest(
            method=self.command,
            path=path,
            headers=headers,
            json=parsed,
            body=body,
            query=query,
            request_id=self._request_id,
        )
        fake._record(record)

        route = path.rstrip("/")
        try:
            if self.command == "POST" and route == "/v1/chat/completions":
                self._chat(parsed, fake._pop_script("chat"))
            elif self.command == "POST" and route == "/v1/embeddings":
                self._embeddings(parsed)
            elif self.command == "GET" and route == "/v1/models":
                self._models()
            elif self.command == "GET" and route.startswith("/v1/models/"):
                self._model(route[len("/v1/models/") :])
            else:
                self._send_error(
                    404,
                    message=f"Invalid URL ({self.command} {path})",
                    type="invalid_request_error",
                    code="unknown_url",
                )
        except OSError:
            self.close_connection = True
        except Exception as exc:
            fake._record_error(exc)
            self._send_error(
                500,
                message=f"FakeOpenAIServer failed: {exc!r}",
                type="fake_server_error",
                code="fake_server_error",
            )

    # ----------------------------------------------------------------- responses

    def _send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra = {name.lower(): value for name, value in (headers or {}).items()}
        self.send_response(status)
        if "content-type" not in extra:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if "x-request-id" not in extra:
            self.send_header("x-request-id", self._request_id)
        for name, value in extra.items():
            if name != "content-length":
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_bytes(status, dumps(payload), "application/json", headers)

    def _send_error(
        self,
        status: int,
        *,
        message: str | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = _error_body(status, code=code, message=message, type=type, param=param)
        self._send_json(status, body, headers)

    def _bad_request(self, message: str, param: str | None = None) -> None:
        self._send_error(400, message=message, type="invalid_request_error", code=None, param=param)

    # ----------------------------------------------------------------- endpoints

    def _scripted_error(self, script: ErrorScript) -> None:
        self._send_error(
            script.status,
            message=script.message,
            type=script.type,
            code=script.code,
            param=script.param,
            headers=script.headers,
        )

    def _chat(self, request: Any, script: Script | None) -> None:
        answered, cut_after = self._apply(script)
        if answered:
            return
        if not isinstance(request, dict):
            self._bad_request("The request body must be a JSON object.")
            return
        model = request.get("model")
        if not isinstance(model, str) or not model:
            self._bad_request("you must provide a model parameter", "model")
            return
        if not isinstance(request.get("messages"), list):
            self._bad_request("Missing required parameter: 'messages'.", "messages")
            return
        limit: int | None = None
        for name in ("max_completion_tokens", "max_tokens"):
            value = request.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self._bad_request(
                    f"Invalid '{name}': expected an integer of at least 1, got {value!r}.", name
                )
                return
            limit = value
            break
        n = request.get("n")
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            self._bad_request(f"Invalid 'n': expected a positive integer, got {n!r}.", "n")
            return

        completion = self.server.fake._complete(request, model, limit, n)
        if request.get("stream") is True:
            self._stream(request, completion, n, cut_after)
            return
        payload = {
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": completion.content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
                for index in range(n)
            ],
            "usage": completion.usage,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        if cut_after is None:
            self._send_json(200, payload)
            return
        self._send_cut_json(payload)

    def _stream(
        self, request: dict[str, Any], completion: _Completion, n: int, cut_after: int | None
    ) -> None:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base: dict[str, Any] = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        if include_usage:
            base["usage"] = None

        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return {**base, "choices": [choice]}

        events: list[dict[str, Any]] = []
        for index in range(n):
            events.append(chunk(index, {"role": "assistant", "content": "", "refusal": None}, None))
            events.extend(chunk(index, {"content": piece}, None) for piece in completion.pieces)
            events.append(chunk(index, {}, completion.finish_reason))
        if include_usage:
            events.append({**base, "choices": [], "usage": completion.usage})

        self._start_event_stream()
        for sent, event in enumerate(events):
            if cut_after is not None and sent >= cut_after:
                break
            self._write_chunk(b"data: " + dumps(event) + b"\n\n")
        if cut_after is not None:
            self.close_connection = True  # no [DONE], no terminating chunk: an abrupt EOF
            return
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_chunks()

    def _embeddings(self, request: Any) -> None:
        if not isinstance(request, dict):
            self._bad_request("The request body must be a JSON object.")
            return
        model = request.get("model")
        if not isinstance(model, str) or not model:
            self._bad_request("you must provide a model parameter", "model")
            return
        raw = request.get("input")
        items: list[str | list[int]]
        if isinstance(raw, str):
            items = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            items = [list(raw)]
        elif (
            isinstance(raw, list)
            and raw
            and all(
                isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x))
                for x in raw
            )
        ):
            items = list(raw)
        else:
            self._bad_request("'input' must be a string, a list of strings, or tokens.", "input")
            return
        dimensions = request.get("dimensions")
        if dimensions is None:
            dimensions = EMBEDDING_DIMENSIONS
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            self._bad_request("Invalid 'dimensions': expected a positive integer.", "dimensions")
            return
        as_base64 = request.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        tokens = 0
        for index, item in enumerate(items):
            vector = _embedding_vector(model, item, dimensions)
            encoded: object = vector
            if as_base64:
                packed = struct.pack(f"<{len(vector)}f", *vector)
                encoded = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": encoded})
            tokens += len(item) if isinstance(item, list) else len(_encode(item, model)[1])
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _models(self) -> None:
        data = [_model_object(name) for name in self.server.fake.models]
        self._send_json(200, {"object": "list", "data": data})

    def _model(self, name: str) -> None:
        if name in self.server.fake.models:
            self._send_json(200, _model_object(name))
            return
        self._send_error(
            404,
            message=f"The model '{name}' does not exist or you do not have access to it.",
            code="model_not_found",
        )


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake-openai"}


def _embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector derived from a hash of the model and the input."""
    seed = hashlib.sha256(dumps([model, item])).digest()
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values.extend((byte - 127.5) / 127.5 for byte in block)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Round-trip through float32 so the JSON and base64 encodings give identical vectors.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]


@dataclass(frozen=True)
class _Completion:
    id: str
    created: int
    model: str
    pieces: list[str]
    content: str
    finish_reason: str
    usage: dict[str, Any]


# --------------------------------------------------------------------------- public server


class _HTTPServer(FakeHTTPServer):
    fake: FakeOpenAIServer
    handler = _Handler
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
        host: str = "127.0.0.1",
    ) -> None:
        self.reply: str | ReplyFunc = reply
        self.prompt_tokens: int | TokenCountFunc = prompt_tokens
        self.cached_tokens: int = cached_tokens
        self.reasoning_tokens: int = reasoning_tokens
        self.models: list[str] = list(models)
        super().__init__(host, ("chat",))
        self._errors: list[BaseException] = []
        self._completion_ids = itertools.count(1)

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
            if not isinstance(script, SCRIPT_TYPES):
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

    # ----------------------------------------------------------------- internals

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _next_request_id(self) -> str:
        return self._next_id("req_fake_")

    def _complete(
        self, request: dict[str, Any], model: str, limit: int | None, n: int
    ) -> _Completion:
        reply = self.reply
        text = reply(request) if callable(reply) else reply
        if not isinstance(text, str):
            raise TypeError(f"reply must return a str, got {type(text).__name__}")
        enc, tokens = _encode(text, model)
        reasoning = self.reasoning_tokens
        finish_reason = "stop"
        if limit is not None and reasoning + len(tokens) > limit:
            finish_reason = "length"
            reasoning = min(reasoning, limit)
            tokens = tokens[: limit - reasoning]
        pieces = _split_pieces(enc, tokens)

        counter = self.prompt_tokens
        prompt = counter(request) if callable(counter) else counter
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
            completion_id = f"chatcmpl-fake-{next(self._completion_ids)}"
        return _Completion(
            id=completion_id,
            created=int(time.time()),
            model=model,
            pieces=pieces,
            content="".join(pieces),
            finish_reason=finish_reason,
            usage=usage,
        )
