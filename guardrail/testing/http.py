"""The HTTP plumbing shared by the fake provider servers of :mod:`guardrail.testing`.

A fake is a real HTTP/1.1 server on an ephemeral port, served from background threads:
:class:`FakeServerBase` runs it (start, stop, context manager, port), keeps the scripted
faults of each endpoint and records every request; :class:`FakeHTTPServer` tracks the open
(keep-alive) connections so that ``stop()`` can drop them; :class:`FakeHandler` registers its
connection, applies a script, and writes JSON bodies cut half-way and chunked server-sent
events. Each fake adds its provider's routes, bodies and error shape.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar

POLL_INTERVAL: Final = 0.01  # upper bound on how long stop() waits for the accept loop
JOIN_TIMEOUT: Final = 2.0


# --------------------------------------------------------------------------- scripts


@dataclass(frozen=True)
class ErrorScript:
    """Answer with an HTTP error in the provider's error shape (OpenAI's, for
    :class:`~guardrail.testing.FakeOpenAIServer`).

    ``type``/``message`` left as ``None`` get realistic defaults for ``status`` and ``code``.
    """

    status: int
    code: str | None = None
    message: str | None = None
    type: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DisconnectScript:
    """Read the request, then close the connection without sending any response."""


@dataclass(frozen=True)
class StreamCutScript:
    """Send ``after_chunks`` SSE chunks, then close the connection (no ``[DONE]``).

    On a non-streaming request the status line, headers and half of the JSON body are sent
    before the connection is closed.
    """

    after_chunks: int = 1


@dataclass(frozen=True)
class DelayScript:
    """Wait ``seconds`` before answering normally (the wait ends early when the server stops)."""

    seconds: float


@dataclass(frozen=True, eq=False)
class HoldScript:
    """Hold the answer until :meth:`release` (or until the server stops): a provider still
    working, for as long as the test wants. ``held`` is set once the request waits. On a
    chat-completion stream, ``after_chunks`` SSE chunks are sent first: the stream is open,
    then silent until released."""

    after_chunks: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()

    def wait_held(self, timeout: float = 10.0) -> None:
        """Return once the request is being held; raise if it is not within ``timeout``."""
        if not self.held.wait(timeout):
            raise TimeoutError(f"no request was held within {timeout:g} s")


Script: TypeAlias = ErrorScript | DisconnectScript | StreamCutScript | DelayScript | HoldScript
SCRIPT_TYPES: Final = (ErrorScript, DisconnectScript, StreamCutScript, DelayScript, HoldScript)


def non_negative(value: float, name: str) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0")


def retry_headers(headers: Mapping[str, str] | None, retry_after: float | None) -> dict[str, str]:
    """``headers`` plus ``retry-after`` (seconds, rounded up) when ``retry_after`` is set."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers.setdefault("retry-after", str(math.ceil(retry_after)))
    return all_headers


# --------------------------------------------------------------------------- HTTP machinery


def dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def shutdown_socket(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class FakeHTTPServer(ThreadingHTTPServer):
    """Serves one fake; remembers its open connections so that ``stop()`` can drop them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256
    handler: ClassVar[type[FakeHandler]]

    def __init__(self, fake: FakeServerBase[Any], host: str) -> None:
        self.fake = fake
        self.stopping = threading.Event()
        self.conn_lock = threading.Lock()
        self.connections: dict[socket.socket, threading.Thread] = {}
        super().__init__((host, 0), self.handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or exc is None:
            return  # the client went away, or stop() shut the socket down
        self.fake._record_error(exc)

    def register(self, conn: socket.socket) -> None:
        with self.conn_lock:
            self.connections[conn] = threading.current_thread()
            stopping = self.stopping.is_set()
        if stopping:
            shutdown_socket(conn)

    def unregister(self, conn: socket.socket) -> None:
        with self.conn_lock:
            self.connections.pop(conn, None)

    def close_connections(self) -> list[threading.Thread]:
        with self.conn_lock:
            items = list(self.connections.items())
        for conn, _ in items:
            shutdown_socket(conn)
        return [thread for _, thread in items]


class FakeHandler(BaseHTTPRequestHandler):
    """One connection: keep-alive bookkeeping, scripts, cut bodies and SSE writing."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    disable_nagle_algorithm = True
    server: FakeHTTPServer
    request_id_header: ClassVar[str] = "x-request-id"

    _request_id = ""

    def setup(self) -> None:
        super().setup()
        self.server.register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.unregister(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        raise NotImplementedError

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _parse_json(body: bytes) -> Any:
        """The JSON body, or None (no body, or not JSON)."""
        if body:
            with contextlib.suppress(ValueError):
                return json.loads(body)
        return None

    # -- scripts

    def _delay_event(self) -> threading.Event:
        """What ends a scripted delay early: the server stopping."""
        return self.server.stopping

    def _scripted_error(self, script: ErrorScript) -> None:
        raise NotImplementedError

    def _hold(self, script: HoldScript) -> bool:
        """Wait until ``script`` is released; True when the server stopped first."""
        script.held.set()
        stopping = self._delay_event()
        while not script.released.wait(POLL_INTERVAL):
            if stopping.is_set():
                self.close_connection = True
                return True
        return False

    def _apply(self, script: Script | None) -> tuple[bool, int | None]:
        """(answered already?, events to send before cutting the stream)."""
        if isinstance(script, HoldScript):
            return self._hold(script), None
        if isinstance(script, DelayScript):
            if self._delay_event().wait(script.seconds):
                self.close_connection = True
                return True, None
            return False, None
        if isinstance(script, ErrorScript):
            self._scripted_error(script)
            return True, None
        if isinstance(script, DisconnectScript):
            self.close_connection = True
            return True, None
        if isinstance(script, StreamCutScript):
            return False, script.after_chunks
        return False, None

    # -- responses

    def _send_cut_json(self, payload: object) -> None:
        """A 200 whose connection is cut half-way through the JSON body."""
        data = dumps(payload)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(self.request_id_header, self._request_id)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def _start_event_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header(self.request_id_header, self._request_id)
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


# --------------------------------------------------------------------------- the fake


RecordT = TypeVar("RecordT")
_FakeT = TypeVar("_FakeT", bound="FakeServerBase[Any]")


class FakeServerBase(Generic[RecordT]):
    """Lifecycle, scripted faults per endpoint, and recorded requests of one fake."""

    _name: ClassVar[str]
    _server_class: ClassVar[type[FakeHTTPServer]]

    def __init__(self, host: str, endpoints: Iterable[str]) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._requests: list[RecordT] = []
        self._scripts: dict[str, deque[Script]] = {name: deque() for name in endpoints}
        self._ids = itertools.count(1)
        self._httpd: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self: _FakeT) -> _FakeT:
        """Bind an ephemeral port and serve in a background thread; returns ``self``."""
        with self._lock:
            if self._httpd is not None:
                raise RuntimeError(f"{self._name} is already running")
            httpd = self._server_class(self, self.host)
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL},
                name=f"{self._name}:{httpd.server_port}",
                daemon=True,
            )
            self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection. Safe to call more than once."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None or thread is None:
            return
        httpd.stopping.set()  # ends scripted delays; connections registered from now close
        self._stopping()
        httpd.shutdown()
        httpd.server_close()
        handlers = httpd.close_connections()
        thread.join(JOIN_TIMEOUT)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for handler in handlers:
            if handler is not threading.current_thread():
                handler.join(max(0.0, deadline - time.monotonic()))

    def _stopping(self) -> None:
        """Called by ``stop()`` once new connections are refused."""

    def __enter__(self: _FakeT) -> _FakeT:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only while running)."""
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError(f"{self._name} is not running; call start() first")
        return httpd.server_port

    # -- scripts and records

    def _enqueue(self, endpoint: str, *scripts: Script) -> None:
        with self._lock:
            self._scripts[endpoint].extend(scripts)

    def _pop_script(self, endpoint: str) -> Script | None:
        with self._lock:
            queue = self._scripts[endpoint]
            return queue.popleft() if queue else None

    @property
    def requests(self) -> list[RecordT]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def _record(self, request: RecordT) -> None:
        with self._lock:
            self._requests.append(request)

    def _record_error(self, exc: BaseException) -> None:
        """An exception raised while answering (not a dropped connection)."""

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}{next(self._ids)}"
