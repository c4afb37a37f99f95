"""Malformed requests the fuzzer found, one by one: each is refused with an
InvalidRequestError naming the field, before anything is reserved or sent; and requests
the API is sure to reject (empty messages, unknown roles, a non-bool stream) are not sent."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

import guardrail
from guardrail import Guard, InvalidRequestError, Policy

HELLO = [{"role": "user", "content": "Hello there"}]


def deep(n: int) -> Any:
    value: Any = "x"
    for _ in range(n):
        value = [value]
    return value


def deep_items(n: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(n):
        schema = {"type": "array", "items": schema}
    return schema


TOO_DEEP = 20_000
"""Deeper than json.dumps can go on every supported Python (3.11 stops near 1,000 levels;
3.13's C encoder serialises 3,000 and stops before 10,000): what cannot be sent."""

OPENAI_CASES: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": 7, "content": "x"}]}, "[1].role"),
    ({"stream": "yes"}, "stream must be True or False"),
    ({"stream": 1}, "stream must be True or False"),
    ({"stream": True, "stream_options": 5}, "stream_options must be a dict"),
    ({"stream": True, "stream_options": "include_usage"}, "stream_options must be a dict"),
    ({"stream": True, "stream_options": ["x"]}, "stream_options must be a dict"),
    ({"tools": True}, "tools must be a list"),
    (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": deep_items(TOO_DEEP)}}
            ]
        },
        "nested more than",
    ),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": 3}, "temperature must be between 0 and 2"),
    ({"top_p": Decimal("0.5")}, "top_p is a Decimal"),
    ({"metadata": {"k": Decimal("1")}}, "metadata.k is a Decimal"),
    ({"metadata": {"k": b"bytes"}}, "metadata.k is a bytes"),
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "lone surrogate"),
    ({"user": "\udfff"}, "lone surrogate"),
    ({"logit_bias": deep(TOO_DEEP)}, "nested more than 64"),
    ({"seed": math.inf}, "seed is inf"),
    ({"model": "x" * 100_000}, "at most 256"),
    ({"not_a_parameter": 1}, "takes no parameter 'not_a_parameter'"),
]


@pytest.mark.parametrize(("change", "says"), OPENAI_CASES)
def test_openai_refuses_before_anything_is_held_or_sent(
    server: Any, change: dict[str, Any], says: str
) -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=1), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    with pytest.raises(InvalidRequestError, match=None) as info:
        client.for_tenant("t1").chat.completions.create(
            **{"model": "gpt-4o", "messages": HELLO, **change}
        )
    assert says in str(info.value)
    assert server.chat_requests == []
    usage = guard.usage("t1")
    assert usage.reserved_usd == 0 and usage.requests == 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"input": "hello \ud800"}, "input has a lone surrogate '\\ud800' at position 6"),
        ({"input": ["ok", "\udfff"]}, "input[1] has a lone surrogate"),
        ({"input": ["ok", [1, 2], "x\ud801"]}, "input[2] has a lone surrogate"),
        ({"extra_body": {"\ud800": 1}}, "a key of extra_body has a lone surrogate"),
    ],
)
def test_openai_embeddings_refuse_a_lone_surrogate(
    server: Any, change: dict[str, Any], says: str
) -> None:
    """The SDK serialises with ensure_ascii=False and encodes to UTF-8: a lone surrogate
    would fail inside it, after the reservation, as a UnicodeEncodeError."""
    guard = Guard(Policy(daily_spend_usd=1))
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    with pytest.raises(InvalidRequestError) as info:
        client.for_tenant("t1").embeddings.create(
            **{"model": "text-embedding-3-small", "input": "hi", **change}
        )
    assert says in str(info.value)
    assert server.requests == []
    assert guard.usage("t1").reserved_usd == 0


ANTHROPIC_CASES: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "messages[0].role"),
    ({"stream": "true"}, "stream must be True or False"),
    ({"system": 5}, "system must be a str"),
    ({"metadata": {"user_id": math.nan}}, "metadata.user_id is nan"),
    ({"temperature": 0.5}, "takes no parameter"),  # this SDK release dropped it
]


@pytest.mark.parametrize(("change", "says"), ANTHROPIC_CASES)
def test_anthropic_refuses_before_anything_is_held_or_sent(
    fake: Any, change: dict[str, Any], says: str
) -> None:
    guard = Guard(Policy(daily_spend_usd=1))
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0)
    client = guard.wrap(raw).for_tenant("t1")
    with pytest.raises(InvalidRequestError) as info:
        client.messages.create(
            **{"model": "claude-sonnet-4-5", "messages": HELLO, "max_tokens": 100, **change}
        )
    assert says in str(info.value)
    assert fake.requests == []
    assert guard.usage("t1").reserved_usd == 0


def test_public_functions_raise_clear_errors() -> None:
    cases = [
        (lambda: guardrail.count_text(None, "gpt-4o"), "text must be a str"),  # type: ignore[arg-type]
        (
            lambda: guardrail.trim_messages(HELLO, "gpt-4o", 100, max_history_messages=[]),  # type: ignore[arg-type]
            "max_history_messages",
        ),
        (
            lambda: guardrail.PromptBuilder("gpt-4o", reserve_output=10).build(context=0),  # type: ignore[arg-type]
            "context must be a list",
        ),
        (
            lambda: guardrail.ConversationMemory("gpt-4o", 100, pinned=None),  # type: ignore[arg-type]
            "pinned must be a list",
        ),
        (lambda: guardrail.pack_documents(None, 100, "gpt-4o"), "docs must be a list"),  # type: ignore[arg-type]
        (lambda: guardrail.model_info("x" * 100_000), "at most 256"),
        (
            lambda: guardrail.count_messages([{"role": "user", "x": deep(3000)}], "gpt-4o"),
            "nested more than",
        ),
    ]
    for call, says in cases:
        with pytest.raises(guardrail.GuardrailError) as info:
            call()
        assert says in str(info.value)
        assert len(str(info.value)) < 400  # a deep or huge value is never printed whole
    with pytest.raises(TypeError):  # Python's convention for a wrong type still holds
        guardrail.count_text(b"x", "gpt-4o")  # type: ignore[arg-type]
