"""A Messages body field guardrail does not meter never passes silently under a money
limit: the beta fields ``beta.messages.create`` takes and ``messages.create`` does not (a
server-held ``thread``, ``mcp_servers``, ``fallbacks``, ``context_management``...), sent
through the guarded ``messages.create`` as ``extra_body`` with the beta header, and fields
no SDK knows, are refused with ``UnpricedOption`` before anything is sent (not even the
exact count); the fields of ``messages.create`` go through. The real SDK over loopback,
against guardrail.testing's fake (adapted from the review's reproductions)."""

from __future__ import annotations

import asyncio
import json
import warnings
from decimal import Decimal
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import Guard, Policy, UnpricedOption
from guardrail.providers.anthropic.bounds import KNOWN_FIELDS, STATEFUL_FIELDS
from guardrail.testing import FakeAnthropicServer

MODEL = "claude-opus-4-7"
HI = [{"role": "user", "content": "Hello there"}]
THREAD = {"type": "continue", "previous_message_id": "msg_01PreviousTurnOfThisThread"}
CAPPED = Policy(daily_spend_usd=Decimal("1"), loop_limit=None)


def make(
    fake: FakeAnthropicServer, policy: Policy = CAPPED, *, async_: bool = False, **guard_kw: Any
) -> tuple[Guard, Any]:
    raw_cls = anthropic.AsyncAnthropic if async_ else anthropic.Anthropic
    raw = raw_cls(base_url=fake.base_url, api_key="test", max_retries=0, timeout=30)
    guard = Guard(policy, **guard_kw)
    return guard, guard.wrap(raw)  # exact counting on: a refusal sends no count either


def _sdk_fields(module: Any) -> set[str]:
    names = ("MessageCreateParamsBase", "MessageCreateParamsNonStreaming")
    return {f for n in names for f in getattr(module, n).__annotations__}


GA = _sdk_fields(anthropic.types.message_create_params)
BETA_ONLY = sorted(_sdk_fields(anthropic.types.beta.message_create_params) - GA - KNOWN_FIELDS)


def test_a_server_held_thread_in_extra_body_is_refused_and_nothing_is_sent(fake) -> None:
    guard, client = make(fake)
    with pytest.raises(UnpricedOption, match="'thread'") as info:
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=HI,
            extra_body={"thread": THREAD},
            extra_headers={"anthropic-beta": "message-threads-2026-08-12"},
        )
    assert "client.unwrapped" in str(info.value)  # how to send it anyway
    assert fake.requests == []  # neither the message nor its count
    assert guard.usage("default").spent_usd == 0


def test_mcp_servers_in_extra_body_are_refused(fake) -> None:
    _, client = make(fake)
    mcp = [{"type": "url", "url": "https://mcp.example.com/sse", "name": "big-mcp"}]
    with pytest.raises(UnpricedOption, match="'mcp_servers'"):
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=HI,
            extra_body={"mcp_servers": mcp},
            extra_headers={"anthropic-beta": "mcp-client-2025-11-20"},
        )
    assert fake.requests == []


@pytest.mark.parametrize("name", sorted(STATEFUL_FIELDS))
def test_every_stateful_field_is_refused_under_a_money_limit(fake, name: str) -> None:
    _, client = make(fake)
    with pytest.raises(UnpricedOption, match=repr(name)):
        client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={name: {"type": "x"}}
        )
    assert fake.requests == []


@pytest.mark.parametrize("name", BETA_ONLY)
def test_every_beta_only_field_of_the_installed_sdk_is_refused(fake, name: str) -> None:
    """Read from the SDK's own param TypedDicts: a field a new release adds to
    beta.messages.create only is refused without guardrail knowing its name."""
    _, client = make(fake)
    with pytest.raises(UnpricedOption, match=repr(name)):
        client.messages.create(model=MODEL, max_tokens=100, messages=HI, extra_body={name: 1})
    assert fake.requests == []


def test_a_field_no_sdk_knows_is_refused_under_a_money_limit(fake) -> None:
    _, client = make(fake)
    with pytest.raises(UnpricedOption, match=r"'frobnicate' \(a request field guardrail does not"):
        client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"frobnicate": {"on": True}}
        )
    assert fake.requests == []


def test_a_null_field_asks_nothing_and_is_sent(fake) -> None:
    _, client = make(fake)
    client.messages.create(model=MODEL, max_tokens=100, messages=HI, extra_body={"thread": None})
    assert len(fake.message_requests) == 1


def test_fields_guardrail_knows_go_through_extra_body(fake) -> None:
    """Sampling options (this SDK release has no parameter for some), a beta header with no
    beta field, and the SDK's own messages.create fields are sent as usual."""
    _, client = make(fake)
    client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=HI,
        extra_body={"temperature": 0.2, "top_k": 5, "top_p": 0.9, "stop_sequences": ["##"]},
        extra_headers={"anthropic-beta": "files-api-2025-04-14"},
        metadata={"user_id": "u-1"},
    )
    sent = fake.message_requests[-1].json
    assert sent["temperature"] == 0.2 and sent["top_k"] == 5 and sent["metadata"]["user_id"]


def test_fallbacks_are_refused_so_no_fallback_can_outspend_the_reservation(fake) -> None:
    """A fallback entry may override max_tokens (here 125x the bound reserved), speed and
    the model (5x dearer): the reservation could not bound it."""
    _, client = make(fake, Policy(daily_spend_usd=Decimal("10"), loop_limit=None))
    beta = {"anthropic-beta": "server-side-fallback-2026-07-01"}
    for fallbacks in (
        [{"model": "claude-opus-4-7", "max_tokens": 32_000}],
        [{"model": "claude-opus-4-7", "speed": "fast"}],  # refused at the top level too
    ):
        with pytest.raises(UnpricedOption, match="'fallbacks'"):
            client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=256,
                messages=HI,
                extra_body={"fallbacks": fallbacks},
                extra_headers=beta,
            )
    assert fake.requests == []


def test_without_a_money_limit_it_is_sent_counted_and_recorded_at_an_unknown_cost(fake) -> None:
    """Token limits still apply; the cost is unknown (as for an unpriced model), with one
    warning."""
    records: list[guardrail.UsageRecord] = []
    fake.prompt_tokens = 900_000  # what a held thread bills
    guard, client = make(fake, Policy(loop_limit=None), sinks=[records.append])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"thread": THREAD}
        )
    assert any("'thread'" in str(w.message) for w in seen)
    assert json.loads(fake.message_requests[-1].body)["thread"] == THREAD
    record = records[-1]
    assert record.extra["cost_unknown"] and record.cost_usd == 0
    assert record.input_tokens == 900_000  # the tokens billed are counted


def test_the_async_client_refuses_before_sending(fake) -> None:
    _, client = make(fake, async_=True)

    async def call() -> None:
        await client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"thread": THREAD}
        )

    with pytest.raises(UnpricedOption):
        asyncio.run(call())
    assert fake.requests == []


def test_a_beta_messages_call_is_still_refused_on_its_own_namespace(fake) -> None:
    _, client = make(fake)
    with pytest.raises(guardrail.GuardrailError):
        client.beta.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert fake.requests == []


# -- token limits: input nothing counts cannot pass them either ---------------------------

TOKEN_CAPPED = Policy(tokens_per_minute=50_000, loop_limit=None)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"thread": THREAD}, "'thread'"),
        ({"mcp_servers": [{"type": "url", "url": "https://m.example", "name": "m"}]}, "mcp"),
        ({"a_field_no_sdk_knows": {"x": 1}}, "a_field_no_sdk_knows"),
    ],
    ids=["thread", "mcp_servers", "unknown"],
)
def test_under_a_token_limit_input_nothing_counts_is_refused(fake, body, named) -> None:
    # Without the refusal a held thread billed 900,000 tokens against a 50,000 per-minute
    # limit that reserved 20.
    fake.prompt_tokens = 900_000
    guard, client = make(fake, TOKEN_CAPPED)
    with pytest.raises(guardrail.UnboundedInput, match=named) as info:
        client.messages.create(model=MODEL, max_tokens=100, messages=HI, extra_body=body)
    assert isinstance(info.value, UnpricedOption)  # caught where an unpriced option is
    assert "token limit" in str(info.value) and "client.unwrapped" in str(info.value)
    assert fake.requests == []
    usage = guard.usage("default")
    assert usage.requests == usage.input_tokens == 0


def test_under_a_parents_token_limit_too(fake) -> None:
    guard, client = make(fake, Policy(loop_limit=None), tenant_policies={"org": TOKEN_CAPPED})
    with pytest.raises(guardrail.UnboundedInput) as info, guard.tenant("u1", parents=["org"]):
        client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"thread": THREAD}
        )
    assert info.value.scopes == ("org",)
    assert fake.requests == []


def test_a_server_tool_nothing_bounds_is_refused_under_a_token_limit(fake) -> None:
    _, client = make(fake, TOKEN_CAPPED)
    tool = {"type": "mcp_toolset", "mcp_server_name": "big-mcp"}
    with pytest.raises(guardrail.UnboundedInput, match="mcp_toolset"):
        client.messages.create(model=MODEL, max_tokens=100, messages=HI, tools=[tool])
    assert fake.requests == []


def test_a_premium_option_is_only_a_price_so_a_token_limit_lets_it_through(fake) -> None:
    # An inference_geo guardrail has no price for: its tokens are counted as any others.
    records: list[guardrail.UsageRecord] = []
    _, client = make(fake, TOKEN_CAPPED, sinks=[records.append])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"inference_geo": "eu"}
        )
    assert records[-1].outcome == "ok" and records[-1].extra["cost_unknown"]


def test_the_async_client_refuses_it_under_a_token_limit(fake) -> None:
    _, client = make(fake, TOKEN_CAPPED, async_=True)

    async def call() -> None:
        await client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"thread": THREAD}
        )

    with pytest.raises(guardrail.UnboundedInput):
        asyncio.run(call())
    assert fake.requests == []


def test_no_fallback_model_turns_it_into_another_refusal(fake, registered) -> None:
    """The refusal is the request's (its thread), not the model's: trying a larger fallback
    model for a prompt too long for the first must not hide it behind a context-window
    error that advises trimming."""
    small = "tiny-claude-for-fallbacks"
    registered.append(small)
    guardrail.register_model(
        small, like="claude-haiku-4-5", context_window=2_000, max_output_tokens=200
    )
    policy = Policy(
        tokens_per_minute=1_000_000, fallback_models=("claude-haiku-4-5",), loop_limit=None
    )
    _, client = make(fake, policy)
    long = [{"role": "user", "content": "word " * 5_000}]  # over the small model's window
    with pytest.raises(guardrail.UnboundedInput, match="'thread'"):
        client.messages.create(
            model=small, max_tokens=100, messages=long, extra_body={"thread": THREAD}
        )
    assert fake.requests == []


def test_billing_fields_are_a_price_so_a_token_limit_lets_them_through(fake) -> None:
    records: list[guardrail.UsageRecord] = []
    _, client = make(fake, TOKEN_CAPPED, sinks=[records.append])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"billing_policy": {"x": 1}}
        )
    assert records[-1].outcome == "ok" and records[-1].extra["cost_unknown"]
    _, capped = make(fake)  # a money limit refuses it
    with pytest.raises(UnpricedOption, match="billing_policy"):
        capped.messages.create(
            model=MODEL, max_tokens=100, messages=HI, extra_body={"billing_policy": {"x": 1}}
        )
