"""Request options billed above the price data's rates (an OpenAI ``service_tier`` such as
``"priority"`` on a model the price data has no Priority prices for, Chat Completions audio
and web search, the Responses ``image_generation`` tool, Anthropic's ``speed="fast"`` and
an ``inference_geo`` other than ``"global"`` and ``"us"``) cannot be reserved at their
price: under a money limit they are refused with :class:`~guardrail.UnpricedOption` before
anything is sent; without one they go through, counted, with an unknown cost. (A tier the
price data prices is reserved and settled at its prices: tests/test_service_tiers.py; US-only
inference at 1.1x: tests/test_inference_geo.py.) A stored prompt (``prompt={"id": ...}``) is
reserved as ``Policy.file_id_tokens`` says. The real SDKs over loopback, against
guardrail.testing's fakes."""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.catalog.pricing import tier_unpriced
from guardrail.providers.openai.responses import count_request_input
from guardrail.testing import FakeAnthropicServer, FakeOpenAIServer

HELLO = [{"role": "user", "content": "Say hello"}]
CAPPED = Policy(daily_spend_usd=5, loop_limit=None)
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="  # an empty WAV


def _openai(server: FakeOpenAIServer, policy: Policy, **guard_kw: Any) -> tuple[Guard, Any]:
    guard = Guard(policy, **guard_kw)
    return guard, guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))


def _anthropic(fake: FakeAnthropicServer, policy: Policy, **guard_kw: Any) -> tuple[Guard, Any]:
    guard = Guard(policy, **guard_kw)
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0)
    return guard, guard.wrap(raw, exact_count=False)


# gpt-5 has Priority prices in the price data (reserved at them); gpt-5-nano has none, and
# no tier has "ultrafast" prices.
NO_PRIORITY = "gpt-5-nano"
CHAT_PREMIUMS = {
    "priority": dict(model=NO_PRIORITY, service_tier="priority"),
    "fast": dict(model=NO_PRIORITY, service_tier="fast"),
    "ultrafast": dict(model="gpt-5", service_tier="ultrafast"),
    "priority_in_extra_body": dict(model=NO_PRIORITY, extra_body={"service_tier": "priority"}),
    "audio_output": dict(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    ),
    "audio_modality_only": dict(model="gpt-audio", modalities=["audio"]),
    "audio_input": dict(
        model="gpt-4o-audio-preview",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is said?"},
                    {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}},
                ],
            }
        ],
    ),
    "audio_answer_in_history": dict(
        model="gpt-4o-audio-preview",
        messages=[
            *HELLO,
            {"role": "assistant", "audio": {"id": "audio_abc"}},
            {"role": "user", "content": "Again"},
        ],
    ),
    "web_search_options": dict(model="gpt-4o-mini", web_search_options={}),
    "search_model": dict(model="gpt-4o-search-preview"),
}


def test_the_tiers_refused_here_have_no_prices_in_the_price_data() -> None:
    assert tier_unpriced(NO_PRIORITY, "priority") and tier_unpriced(NO_PRIORITY, "fast")
    assert tier_unpriced("gpt-5", "ultrafast") and not tier_unpriced("gpt-5", "priority")


@pytest.mark.parametrize("name", sorted(CHAT_PREMIUMS))
def test_chat_premium_options_are_refused_under_a_money_limit(server, name: str) -> None:
    request: dict[str, Any] = {"messages": HELLO, "max_completion_tokens": 20}
    request.update(CHAT_PREMIUMS[name])
    _, client = _openai(server, CAPPED)
    with pytest.raises(guardrail.UnpricedOption) as info:
        client.chat.completions.create(**request)
    assert server.requests == []  # refused before anything was sent
    assert isinstance(info.value, guardrail.PriceUnavailable)
    assert info.value.tenant == "default" and info.value.scopes == ("default",)
    assert "nothing was sent" in str(info.value) and "client.unwrapped" in str(info.value)


@pytest.mark.parametrize("tier", ["default", "auto", "flex", "priority", None])
def test_standard_cheaper_and_priced_tiers_are_guarded(server, tier: str | None) -> None:
    records: list[guardrail.UsageRecord] = []
    _, client = _openai(server, CAPPED, sinks=[records.append])
    extra = {} if tier is None else {"service_tier": tier}
    client.chat.completions.create(model="gpt-5", messages=HELLO, max_completion_tokens=20, **extra)
    assert len(server.chat_requests) == 1
    assert records[-1].cost_usd > 0 and "cost_unknown" not in records[-1].extra


def test_a_premium_option_names_itself_in_the_error(server) -> None:
    _, client = _openai(server, Policy(monthly_spend_usd=50, loop_limit=None))
    with pytest.raises(guardrail.UnpricedOption, match="service_tier='priority'") as info:
        client.chat.completions.create(model=NO_PRIORITY, messages=HELLO, service_tier="priority")
    assert info.value.option == "service_tier='priority'" and info.value.model == NO_PRIORITY


def test_a_refused_premium_option_is_on_the_record(server) -> None:
    records: list[guardrail.UsageRecord] = []
    _, client = _openai(server, CAPPED, sinks=[records.append])
    with pytest.raises(guardrail.UnpricedOption):
        client.chat.completions.create(model=NO_PRIORITY, messages=HELLO, service_tier="priority")
    assert server.requests == []
    [record] = records
    assert record.outcome == "rejected" and record.tenant == "default"
    assert record.model == NO_PRIORITY and "UnpricedOption" in (record.error or "")
    assert record.cost_usd == 0


def test_without_a_money_limit_a_premium_option_is_sent_with_an_unknown_cost(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = _openai(
        server, Policy(tokens_per_day=1_000_000, loop_limit=None), sinks=[records.append]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            client.chat.completions.create(
                model=NO_PRIORITY, messages=HELLO, max_completion_tokens=20, service_tier="priority"
            )
    assert sum("service_tier='priority'" in str(w.message) for w in caught) <= 1  # once
    assert len(server.chat_requests) == 2
    assert server.chat_requests[-1].json["service_tier"] == "priority"
    assert all(r.cost_usd == 0 and r.extra.get("cost_unknown") is True for r in records)
    assert guard.usage("default").input_tokens > 0  # the token limits still count it


def test_a_parents_money_limit_refuses_too(server) -> None:
    guard = Guard(Policy(loop_limit=None), tenant_policies={"org": Policy(daily_spend_usd=1)})
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    with pytest.raises(guardrail.UnpricedOption) as info:
        client.for_tenant("team", parents=["org"]).chat.completions.create(
            model=NO_PRIORITY, messages=HELLO, service_tier="priority"
        )
    assert info.value.scopes == ("org",)
    assert server.requests == []


RESPONSES_PREMIUMS = {
    "priority": dict(model=NO_PRIORITY, service_tier="priority"),
    "ultrafast": dict(model="gpt-5", service_tier="ultrafast"),
    "priority_in_extra_body": dict(model=NO_PRIORITY, extra_body={"service_tier": "priority"}),
    "image_generation": dict(
        model="gpt-5", tools=[{"type": "image_generation", "quality": "high"}]
    ),
}


@pytest.mark.parametrize("name", sorted(RESPONSES_PREMIUMS))
def test_responses_premium_options_are_refused_under_a_money_limit(server, name: str) -> None:
    _, client = _openai(server, CAPPED)
    with pytest.raises(guardrail.UnpricedOption):
        client.responses.create(
            input="draw a cat", max_output_tokens=200, **RESPONSES_PREMIUMS[name]
        )
    assert server.requests == []


def test_a_web_search_tool_is_still_reserved_at_its_fee(server) -> None:
    _, client = _openai(server, CAPPED)
    client.responses.create(
        model="gpt-5", input="news", max_output_tokens=20, tools=[{"type": "web_search"}]
    )
    assert len([r for r in server.requests if r.path == "/v1/responses"]) == 1


def _reserved(client: Any, **request: Any) -> Decimal:
    with pytest.raises(guardrail.BudgetExceeded) as info:
        client.responses.create(**request)
    return Decimal(str(info.value.requested))


STORED = dict(model="gpt-5", input="hi", max_output_tokens=200)


def test_a_stored_prompt_is_reserved_as_the_file_id_rule_says(server) -> None:
    tiny = Policy(daily_spend_usd="0.0000001", loop_limit=None)
    _, client = _openai(server, tiny)
    plain = _reserved(client, **STORED)
    window = _reserved(client, **STORED, prompt={"id": "pmpt_123", "version": "2"})
    info = guardrail.model_info("gpt-5")
    at_window = guardrail.estimate_cost("gpt-5", info.context_window - 200, 200)
    assert window >= at_window > plain * 100  # the whole window, not the visible input
    _, client = _openai(server, Policy(daily_spend_usd="0.0000001", file_id_tokens=5000))
    stated = _reserved(client, **STORED, prompt={"id": "pmpt_123"})
    assert stated == guardrail.estimate_cost("gpt-5", count_request_input(STORED) + 5000, 200)
    assert server.requests == []


def test_a_stored_prompt_is_refused_when_the_policy_refuses_file_ids(server) -> None:
    _, client = _openai(server, Policy(file_id_tokens="refuse", loop_limit=None))
    with pytest.raises(guardrail.InvalidRequestError, match="stored prompt"):
        client.responses.create(**STORED, prompt={"id": "pmpt_123"})
    assert server.requests == []


def test_a_stored_prompt_under_a_cap_that_holds_its_bound_is_sent(server) -> None:
    records: list[guardrail.UsageRecord] = []
    _, client = _openai(server, CAPPED, sinks=[records.append])
    client.responses.create(**STORED, prompt={"id": "pmpt_123"})
    assert server.requests[-1].json["prompt"] == {"id": "pmpt_123"}
    assert records[-1].extra["uncounted_parts"] == 1
    assert records[-1].extra["reserved_prompt_tokens"] > 100_000


ANTHROPIC_PREMIUMS = {
    # US-only inference is priced (1.1x: tests/test_inference_geo.py); a geo guardrail
    # knows no price for is refused.
    "unknown_geo": {"inference_geo": "eu"},
    "unknown_geo_in_extra_body": {"extra_body": {"inference_geo": "eu"}},
    "fast": {"extra_body": {"speed": "fast"}},
}


@pytest.mark.parametrize("name", sorted(ANTHROPIC_PREMIUMS))
def test_anthropic_premium_options_are_refused_under_a_money_limit(fake, name: str) -> None:
    _, client = _anthropic(fake, CAPPED)
    with pytest.raises(guardrail.UnpricedOption):
        client.messages.create(
            model="claude-opus-4-6", max_tokens=100, messages=HELLO, **ANTHROPIC_PREMIUMS[name]
        )
    assert fake.requests == []


def test_anthropic_global_inference_is_standard(fake) -> None:
    _, client = _anthropic(fake, CAPPED)
    client.messages.create(
        model="claude-opus-4-6", max_tokens=100, messages=HELLO, inference_geo="global"
    )
    assert len(fake.message_requests) == 1
