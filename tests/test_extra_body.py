"""``extra_body`` cannot carry a request past the guard: the SDKs merge it into the JSON
body last, so a key there would win over the parameter the guard counted and bounded. Keys
the SDK method takes are lifted into the parameters (counted, bounded, sent the same);
the rest are sent as they are, and the ones that change what is billed are read from it."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import FakeOpenAIServer

HELLO = [{"role": "user", "content": "hi"}]
BIG = [{"role": "user", "content": "hello " * 2000}]


def test_chat_bounds_and_counts_what_extra_body_sends(server: FakeOpenAIServer) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(max_output_tokens=50, loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    client.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        extra_body={"max_tokens": 100_000, "messages": BIG, "vendor_field": 1},
    )
    sent = server.chat_requests[-1].json
    assert sent["max_tokens"] == 50  # the guard's bound, not extra_body's
    assert sent["messages"][0]["content"] == BIG[0]["content"]  # the prompt that was counted
    assert sent["vendor_field"] == 1  # a field the SDK has no parameter for: sent as given
    assert records[-1].input_tokens == guardrail.count_messages(BIG, "gpt-4o")
    assert records[-1].reserved_usd >= guardrail.estimate_cost(
        "gpt-4o", guardrail.count_messages(BIG, "gpt-4o"), 50
    )


def test_a_model_in_extra_body_is_the_model_priced(server: FakeOpenAIServer) -> None:
    """A cheap model as the parameter, a dear one in extra_body: the dear one is reserved."""
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=20, extra_body={"model": "gpt-4o"}
    )
    assert server.chat_requests[-1].json["model"] == "gpt-4o" == records[-1].model


def test_a_cap_refuses_a_prompt_hidden_in_extra_body(server: FakeOpenAIServer) -> None:
    cost = guardrail.estimate_cost("gpt-4o", guardrail.count_messages(HELLO, "gpt-4o"), 20)
    guard = Guard(Policy(daily_spend_usd=cost * 3, loop_limit=None))
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    with pytest.raises(guardrail.BudgetExceeded):
        client.chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=20, extra_body={"messages": BIG}
        )
    assert server.chat_requests == []


def test_anthropic_bounds_what_extra_body_sends(fake: Any) -> None:
    guard = Guard(Policy(max_output_tokens=40, loop_limit=None))
    client = guard.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key="t"))
    client.messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=HELLO, extra_body={"max_tokens": 64_000}
    )
    assert fake.requests[-1].json["max_tokens"] <= 40


def test_a_conversation_in_extra_body_is_reserved(server: FakeOpenAIServer) -> None:
    """On an SDK release without the ``conversation`` parameter it can only be sent in
    extra_body: its history is still counted by the provider before the call."""
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(loop_limit=None), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    client.responses.create(model="gpt-4o", input="one", extra_body={"conversation": "conv_1"})
    second = client.responses.create(
        model="gpt-4o", input="two", extra_body={"conversation": "conv_1"}
    )
    counts = [r for r in server.requests if r.path.endswith("/input_tokens")]
    assert len(counts) == 2
    assert records[-1].extra["exact_prompt_tokens"] == second.usage.input_tokens


def test_background_in_extra_body_is_refused(server: FakeOpenAIServer) -> None:
    client = Guard(Policy()).wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    with pytest.raises(guardrail.ConfigurationError, match="background"):
        client.responses.create(model="gpt-4o", input="go", extra_body={"background": True})
    assert server.response_requests == []
