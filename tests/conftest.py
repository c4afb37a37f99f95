"""Shared fixtures. Tests marked ``redis`` need a real Redis on 127.0.0.1:6379: they are
skipped without one on a laptop, and fail under CI (``CI`` set), never silently skip."""

from __future__ import annotations

import os
import socket
from datetime import UTC

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("GUARDRAIL_TEST_REDIS_PORT", "6379"))


def _redis_answers() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("redis") is not None and not _redis_answers():
        message = f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: Redis tests must run)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def _session_server():  # type: ignore[no-untyped-def]
    from guardrail.testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def server(_session_server):  # type: ignore[no-untyped-def]
    """A fake OpenAI server on a loopback port, reset for each test."""
    from guardrail.testing import DEFAULT_REPLY, default_prompt_tokens

    _session_server.reset()
    _session_server.reply = DEFAULT_REPLY
    _session_server.prompt_tokens = default_prompt_tokens
    _session_server.cached_tokens = 0
    _session_server.reasoning_tokens = 0
    _session_server.stream_usage = True
    return _session_server


@pytest.fixture
def clock():  # type: ignore[no-untyped-def]
    from datetime import datetime

    from guardrail import ManualClock

    return ManualClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))


@pytest.fixture
def sleeps() -> list[float]:
    """Pass ``sleep=sleeps.append`` to a Guard: retries record their waits, nobody sleeps."""
    return []


@pytest.fixture(scope="module")
def _fake():  # type: ignore[no-untyped-def]
    from guardrail.testing import FakeAnthropicServer

    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def fake(_fake):  # type: ignore[no-untyped-def]
    """A fake Anthropic server on a loopback port (one per test module), back to its
    defaults for each test."""
    from guardrail.testing import FakeAnthropicServer

    _fake.reset()
    defaults = FakeAnthropicServer()
    for name in (
        "reply",
        "prompt_tokens",
        "cache_read_input_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "thinking",
        "context_window",
        "tokens_per_delta",
        "usage_patch",
    ):
        setattr(_fake, name, getattr(defaults, name))
    return _fake
