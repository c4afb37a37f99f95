"""The gateway relays a server-sent event of any length (up to MAX_EVENT_BYTES): aiohttp's
own line reader stops at 512 KiB, and the Responses API echoes the request's
``instructions`` and ``tools`` in ``response.created`` and ``response.completed`` (a long
system prompt, far inside the window and the body limit, broke the relay with an ASGI
error and a truncated stream; found by a review)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from guardrail.testing import FakeAnthropicServer, FakeOpenAIServer
from tests._gateway import ADMIN_KEY, TENANT_KEY, UPSTREAM_KEY, config_for, running

BIG_INSTRUCTIONS = "Follow the house style. " * 24_000  # ~576 KB, ~120k tokens
MODEL = "gpt-4.1"  # a 1M-token window


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GR_TEST_OPENAI_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ADMIN_KEY", ADMIN_KEY)


@pytest.fixture
def gateway(server: FakeOpenAIServer, fake: FakeAnthropicServer) -> Iterator[tuple[str, Any]]:
    with running(config_for(server.base_url, fake.base_url)) as found:
        yield found


def test_direct_sdk_streams_the_long_event(server) -> None:
    """Control: the provider's stream itself is fine."""
    client = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    kinds = [
        e.type
        for e in client.responses.create(
            model=MODEL, input="hi", instructions=BIG_INSTRUCTIONS, stream=True
        )
    ]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_the_gateway_relays_an_event_longer_than_512_kib(gateway) -> None:
    base, app = gateway
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=TENANT_KEY, max_retries=0)
    kinds: list[str] = []
    stream = client.responses.create(
        model=MODEL, input="hi", instructions=BIG_INSTRUCTIONS, stream=True
    )
    for event in stream:  # today: APIConnectionError (incomplete chunked read)
        kinds.append(event.type)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    usage = app.state.guard.usage("team-a")
    assert usage.reserved_usd == 0 and usage.output_tokens > 0
