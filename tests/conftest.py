"""Shared fixtures. Tests marked ``redis`` need a real Redis on 127.0.0.1:6379, ``postgres``
a real PostgreSQL on 127.0.0.1:5432 (``GUARDRAIL_TEST_POSTGRES`` names another), ``browser``
Debian's chromium and chromedriver: they are skipped without them on a laptop, and fail
under CI (``CI`` set), never silently skip."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import UTC

import pytest
from hypothesis import settings

# Under CI the property tests draw the same examples on every run (seeded by each test's
# name): a landing is not decided by a random draw. Run them without CI to explore new
# examples; a failure found that way becomes a test of its own (see test_packing.py).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("GUARDRAIL_TEST_REDIS_PORT", "6379"))


def _redis_answers() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


POSTGRES_URL = os.environ.get(
    "GUARDRAIL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHROMIUM = os.environ.get("GUARDRAIL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GUARDRAIL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


def _postgres_missing() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"PostgreSQL is not answering at {POSTGRES_URL}: {exc}"
    return None


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    return None


def _missing(item: pytest.Item) -> str | None:
    if item.get_closest_marker("redis") is not None and not _redis_answers():
        return f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT}"
    if item.get_closest_marker("postgres") is not None:
        return _postgres_missing()
    if item.get_closest_marker("browser") is not None:
        return _browser_missing()
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    message = _missing(item)
    if message is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: service tests must run)", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (created and dropped here), as a URL."""
    import uuid

    import psycopg

    name = f"guardrail_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    _session_server.service_tier = "default"
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


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names a test registers (``register_model``); unregistered afterwards whatever happens."""
    from guardrail.catalog.models import unregister_model

    names: list[str] = []
    yield names
    for name in names:
        unregister_model(name)
