"""The gateway's calls to the providers: aiohttp, one pooled session per upstream.

aiohttp rather than httpx2 (the SDKs' HTTP library): measured on this machine, httpx2's
client capped a direct loopback baseline at about 230 requests/s while aiohttp served
2,600, and the gateway's throughput is the upstream client's throughput.

Replies are kept as bytes (relayed to the caller unchanged) and read through
:class:`JsonView`, which gives the engine's adapters the attribute access they use on the
SDKs' objects. Streams are read event by event (:class:`EventStream`): each event keeps its
raw bytes, for relaying, and its parsed data, for the adapter's tally.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from yarl import URL

from guardrail.server.config import UpstreamConfig

__all__ = [
    "Event",
    "EventStream",
    "JsonView",
    "NotAStream",
    "Reply",
    "Upstream",
    "UpstreamError",
    "UpstreamUnreachable",
]

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "te",
        "trailer",
        "proxy-authenticate",
    }
)
_FORWARDED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta", "accept")


class UpstreamError(Exception):
    """The provider answered with an HTTP error: relayed to the caller as it came."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = dict(headers)
        self.body = body
        super().__init__(f"upstream answered HTTP {status}")

    @property
    def response(self) -> UpstreamError:  # the retry policy reads exc.response.headers
        return self


class NotAStream(Exception):
    """The provider answered a ``stream: true`` request with a 2xx that is not an event
    stream (an upstream or a proxy that ignored ``stream``). The flow settles the call from
    the usage ``completion`` reports (it was billed), and the caller gets a 502 that the
    SDKs do not retry (``x-should-retry: false``: a retry would be billed again)."""

    status_code = 502

    def __init__(self, completion: Reply) -> None:
        self.completion = completion
        self.headers = {"x-should-retry": "false"}
        kind = completion.headers.get("content-type") or "no content-type"
        super().__init__(
            f"the upstream answered a streaming request with HTTP {completion.status} "
            f"({kind}), not an event stream; the call was charged from the usage it "
            "reported, if any"
        )

    @property
    def response(self) -> NotAStream:  # the retry policy reads exc.response.headers
        return self


class UpstreamUnreachable(ConnectionError):
    """The provider could not be reached, or did not answer in time."""


class JsonView:
    """Attribute access over parsed JSON (``reply.usage.prompt_tokens``); a missing key is
    an AttributeError, as a missing attribute of an SDK object is."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            return _view(self._data[name])
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return _view(self._data.get(name, default))


def _view(value: Any) -> Any:
    if isinstance(value, dict):
        return JsonView(value)
    if isinstance(value, list):
        return [_view(v) for v in value]
    return value


class Reply(JsonView):
    """A provider's JSON answer: its bytes, headers and parsed body."""

    __slots__ = ("headers", "raw", "status")

    def __init__(self, status: int, headers: Mapping[str, str], raw: bytes) -> None:
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        super().__init__(data if isinstance(data, dict) else {})
        self.status, self.headers, self.raw = status, headers, raw

    @property
    def data(self) -> Any:
        return self._data


class Event(JsonView):
    """One server-sent event: its raw bytes (relayed) and its parsed ``data`` (tallied)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes, data: Mapping[str, Any] | None) -> None:
        super().__init__(data or {})
        self.raw = raw


MAX_EVENT_BYTES = 64 * 2**20
"""The largest server-sent event relayed (twice the largest request body the gateway
takes: a Responses event may echo the whole request)."""


class EventStream:
    """An upstream SSE body, event by event. Closing it closes the connection, which is how
    the provider learns that the caller went away."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.headers = response.headers

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        lines: list[bytes] = []
        size = 0
        try:
            async for line in self._lines():
                lines.append(line)
                size += len(line)
                if size > MAX_EVENT_BYTES:
                    raise UpstreamUnreachable(
                        f"the upstream sent an event of more than {MAX_EVENT_BYTES} bytes"
                    )
                if line in (b"\n", b"\r\n"):
                    yield _event(lines)
                    lines, size = [], 0
            if any(line.strip() for line in lines):
                yield _event(lines)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"the upstream stream broke: {exc!r}") from exc

    async def _lines(self) -> AsyncIterator[bytes]:
        """The body's lines, however long: aiohttp's own line reader stops at 512 KiB, and a
        Responses event echoes the request's instructions and tools (a long system prompt)."""
        pending = bytearray()
        async for chunk in self._response.content.iter_any():
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", start)) >= 0:
                yield bytes(pending[start : end + 1])
                start = end + 1
            del pending[:start]
            if len(pending) > MAX_EVENT_BYTES:
                raise UpstreamUnreachable(
                    f"the upstream sent an event of more than {MAX_EVENT_BYTES} bytes"
                )
        if pending:
            yield bytes(pending)

    async def close(self) -> None:
        self._response.close()

    async def aclose(self) -> None:
        self._response.close()


def _event(lines: list[bytes]) -> Event:
    payload = b"".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
    data: Any = None
    if payload and payload != b"[DONE]":
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
    return Event(b"".join(lines), data if isinstance(data, dict) else None)


class Upstream:
    """One provider: its base URL, its credential (from the environment), a pooled
    session with timeouts."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=config.timeout_seconds, connect=10.0)
        self._base = URL(config.base_url)
        self._prefix = self._base.raw_path.rstrip("/")

    def headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        """What the provider gets: the configured credential, never the tenant's key."""
        headers = {"content-type": "application/json"}
        for name in _FORWARDED_REQUEST_HEADERS:
            value = incoming.get(name)
            if value is not None:
                headers[name] = value
        key = self.config.api_key
        if self.config.name == "anthropic":
            headers.setdefault("anthropic-version", "2023-06-01")
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    def url(self, path: str, query: str = "") -> URL:
        """``path`` is the gateway's (``/v1/chat/completions``), percent-encoded: OpenAI's
        base URL already ends in ``/v1``, Anthropic's does not. Built as it is given
        (``encoded=True``): yarl would otherwise resolve dot segments, and send another
        path than the one the gateway checked."""
        prefix = self._prefix
        if prefix.endswith("/v1") and path.startswith("/v1/"):
            path = path[3:]
        return URL.build(
            scheme=self._base.scheme,
            authority=self._base.raw_authority,
            path=prefix + path,
            query_string=query,
            encoded=True,
        )

    async def post(
        self, path: str, body: Mapping[str, Any], incoming: Mapping[str, str]
    ) -> Reply | EventStream:
        """POST ``body``: a :class:`Reply`, or an :class:`EventStream` for ``stream: true``."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await self.session.post(
                self.url(path), data=data, headers=self.headers(incoming), timeout=self.timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"{self.config.name} upstream unreachable: {exc!r}") from exc
        if response.status >= 400:
            raw = await _read(response)
            raise UpstreamError(response.status, _relayed_headers(response.headers), raw)
        streamed = "text/event-stream" in response.headers.get("content-type", "")
        if body.get("stream") is True and streamed:
            return EventStream(response)
        reply = Reply(response.status, _relayed_headers(response.headers), await _read(response))
        if body.get("stream") is True:
            # Not relayed as the JSON it is: the SDKs read a ``stream=True`` answer as
            # server-sent events whatever its content-type, so a JSON body would reach the
            # caller as an empty stream (no answer, no error) while it was billed. A 502
            # is an error the caller sees; the call is settled from the reply's usage.
            raise NotAStream(reply)
        return reply

    async def forward(
        self, method: str, path: str, query: str, body: bytes, incoming: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """A passthrough call (a path the config lets through, unmetered)."""
        headers = self.headers(incoming)
        if "content-type" in incoming:
            headers["content-type"] = incoming["content-type"]
        url = self.url(path, query)
        try:
            async with self.session.request(
                method, url, data=body or None, headers=headers, timeout=self.timeout
            ) as response:
                return response.status, _relayed_headers(response.headers), await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(f"{self.config.name} upstream unreachable: {exc!r}") from exc


async def _read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnreachable(f"the upstream reply broke: {exc!r}") from exc
    finally:
        response.release()


def _relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _HOP}
