"""Settings changed on a guarded client after its first guarded call (``client.base_url
= ...``, ``client.api_key = ...`` for a key rotation) are used by its guarded calls too:
they are sent on a plain copy of the client, made again once its URL or key was set."""

from __future__ import annotations

import openai
import pytest

from guardrail import Guard, Policy
from guardrail.testing import FakeOpenAIServer

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def servers():
    with FakeOpenAIServer() as one, FakeOpenAIServer() as two:
        yield one, two


def test_base_url_set_after_wrapping_is_used(servers) -> None:
    one, two = servers
    client = Guard(Policy(daily_spend_usd=1, loop_limit=None)).wrap(
        openai.OpenAI(base_url=one.base_url, api_key="x")
    )
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    client.base_url = two.base_url
    n1, n2 = len(one.chat_requests), len(two.chat_requests)
    client.models.list()  # a free call goes to the new host
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert (len(one.chat_requests) - n1, len(two.chat_requests) - n2) == (0, 1)


def test_api_key_rotated_after_wrapping_is_used(servers) -> None:
    one, _ = servers
    client = Guard(Policy(daily_spend_usd=1, loop_limit=None)).wrap(
        openai.OpenAI(base_url=one.base_url, api_key="old-key")
    )
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    client.api_key = "new-key"
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert one.chat_requests[-1].headers.get("authorization") == "Bearer new-key"
