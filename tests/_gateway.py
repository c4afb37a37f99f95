"""Running the gateway in tests: a real uvicorn server on a loopback port, in a thread
(:func:`running`) or as ``guardrail serve`` in a child process (:func:`serve_process`), in
front of the fake providers."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import uvicorn

from guardrail.server.app import create_app
from guardrail.server.config import GatewayConfig, parse_config
from guardrail.stores.base import Store

TENANT_KEY = "sk-team-a-secret"
OTHER_KEY = "sk-team-b-secret"
ADMIN_KEY = "sk-admin-secret"
UPSTREAM_KEY = "sk-upstream-secret"


def config_for(
    openai_url: str | None, anthropic_url: str | None = None, **extra: Any
) -> GatewayConfig:
    upstream: dict[str, Any] = {}
    if openai_url:
        upstream["openai"] = {"base_url": openai_url, "api_key_env": "GR_TEST_OPENAI_KEY"}
    if anthropic_url:
        upstream["anthropic"] = {"base_url": anthropic_url, "api_key_env": "GR_TEST_ANTHROPIC_KEY"}
    data: dict[str, Any] = {
        "store": "memory://",
        "admin_key_env": "GR_TEST_ADMIN_KEY",
        "upstream": upstream,
        "policy": {"daily_spend_usd": 5, "loop_limit": None},
        "keys": [
            {"key": TENANT_KEY, "tenant": "team-a", "parents": ["org-1"]},
            {"key": OTHER_KEY, "tenant": "team-b", "policy": {"daily_spend_usd": "0.000001"}},
        ],
    }
    data.update(extra)
    return parse_config(data)


@contextmanager
def running(
    config: GatewayConfig, store: Store | None = None, sinks: Any = ()
) -> Iterator[tuple[str, Any]]:
    """(the gateway's base URL, the app) while a uvicorn server serves it."""
    app = create_app(config, store=store, sinks=sinks)
    with serving(app) as base:
        yield base, app


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The base URL of ``app`` while a uvicorn server serves it on a loopback port."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)  # waiting for a real server to bind: not a race being hidden
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """A plain GET (urllib: no SDK in between): status, headers (lower-case), body."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, found, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, found, body = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in found.items()}, body.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_process(
    config_path: str, *, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m guardrail serve`` in a child process: (its base URL, the process), once
    ``/health`` answers 200; terminated (SIGTERM) on the way out if still running."""
    port = free_port()
    command = [sys.executable, "-m", "guardrail", "serve", "--config", config_path]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--workers", str(workers)],
        env={**os.environ, **(env or {})},
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # the workers import guardrail and open the store: wait for health
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read() if process.stderr else "exited")
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)  # a child process starting up; nothing is being raced
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=40)


class HeldStream(http.server.BaseHTTPRequestHandler):
    """An upstream that sends two chunks of a chat stream, then holds the rest until the
    test sets ``release`` (or the connection is closed): a stream still running when the
    caller hangs up or the gateway is told to stop. Released, it ends as OpenAI ends a
    stream: a finish chunk, the usage chunk, ``[DONE]``. Each :func:`held_upstream` has
    its own subclass, so its events are its own."""

    release: threading.Event
    closed: threading.Event
    CHUNK: ClassVar[dict[str, Any]] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
    }

    def _send(self, **fields: Any) -> None:
        self.wfile.write(b"data: " + json.dumps({**self.CHUNK, **fields}).encode() + b"\n\n")
        self.wfile.flush()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        text = {"index": 0, "delta": {"content": "Hello there "}, "finish_reason": None}
        try:
            for _ in range(2):
                self._send(choices=[text])
            while not self.release.wait(timeout=0.05):  # poll the socket for the hang-up
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
            self._send(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
            usage = {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
            self._send(choices=[], usage=usage)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:
            pass
        finally:
            self.closed.set()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def held_upstream() -> Iterator[tuple[str, type[HeldStream]]]:
    """(the base URL of a :class:`HeldStream` upstream, its handler class)."""
    handler = type(
        "Held", (HeldStream,), {"release": threading.Event(), "closed": threading.Event()}
    )
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{upstream.server_address[1]}/v1", handler
    finally:
        handler.release.set()
        upstream.shutdown()
        upstream.server_close()


def raw_stream_request(base: str, key: str, request: dict[str, Any]) -> socket.socket:
    """A chat stream request sent on a plain socket (read it with ``recv``): no client
    library between the test and the bytes."""
    host, port = base[len("http://") :].split(":")
    body = json.dumps(request).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock
