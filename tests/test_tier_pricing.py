"""Costs at an OpenAI service tier (guardrail.catalog.pricing with TokenUsage.service_tier):
the price data's prices for the tier (its price variants), exactly as genai-prices gives
them with the tier as its price context, on the integer-rate and the Decimal paths; the
standard tier's path untouched."""

from __future__ import annotations

import random
import uuid
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot

from guardrail.catalog import pricing
from guardrail.catalog.models import model_info, register_model
from guardrail.catalog.pricing import TokenUsage, estimate_cost, tier_unpriced, usage_cost
from guardrail.errors import InvalidRequestError


def _tiered_models() -> list[tuple[str, str]]:
    """(model, tier) for every OpenAI catalog model the price data has tier prices for."""
    found = []
    for provider in data_snapshot.get_snapshot().providers:
        if provider.id != "openai":
            continue
        for model in provider.models:
            tiers = {v.when.get("service_tier") for v in model.price_variants or ()}
            tiers -= {None, "default"}
            if tiers and model_info(model.id, strict=True).provider == "openai":
                found.extend((model.id, tier) for tier in tiers if tier is not None)
    return sorted(set(found))


TIERED = _tiered_models()


def _genai(model: str, usage: TokenUsage, tier: str | None) -> Decimal:
    context = None if tier is None else {"service_tier": tier}
    return genai_prices.calc_price(
        usage.to_genai(), model, provider_id="openai", price_context=context
    ).total_price


def _usage(rng: random.Random, tier: str | None, *, writes: bool = False) -> TokenUsage:
    n_in = rng.choice([0, 1, rng.randrange(1, 5_000), rng.randrange(0, 400_000)])
    cached = rng.choice([0, n_in, rng.randrange(0, n_in + 1)])
    return TokenUsage(
        input_tokens=n_in,
        output_tokens=rng.choice([0, rng.randrange(0, 100_000)]),
        cached_input_tokens=cached,
        cache_write_tokens=rng.randrange(0, n_in - cached + 1) if writes else 0,
        service_tier=tier,
    )


def test_the_price_data_has_tier_prices() -> None:
    tiers = {tier for _, tier in TIERED}
    assert {"priority", "flex"} <= tiers and len(TIERED) > 20


@pytest.mark.parametrize(("model", "tier"), TIERED)
def test_a_tier_is_priced_as_the_price_data_prices_it(model: str, tier: str) -> None:
    rng = random.Random(f"tier-{model}-{tier}")
    info = model_info(model)
    for _ in range(40):
        usage = _usage(rng, tier, writes=rng.random() < 0.25)
        assert usage_cost(info, usage) == _genai(model, usage, tier), usage
    assert not tier_unpriced(info, tier)


@pytest.mark.parametrize(("model", "tier"), TIERED)
def test_a_tier_with_flat_prices_is_priced_by_integer_rates(model: str, tier: str) -> None:
    info = model_info(model)
    usage = TokenUsage(
        input_tokens=1_234, output_tokens=567, cached_input_tokens=200, service_tier=tier
    )
    pico = pricing._pico_cost(info, usage)
    resolved = pricing._resolve_price(info.price_ref or model, "openai", tier)
    flat = all(isinstance(p, (Decimal, type(None))) for p in resolved.flat or (None,))
    assert (pico is not None) == (resolved.flat is not None and flat)
    if pico is not None:
        assert Decimal(pico) / 10**12 == _genai(model, usage, tier)


def test_tiers_are_cached_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = TokenUsage(input_tokens=10_000, output_tokens=1_000)
    costs = {
        tier: usage_cost("gpt-5", TokenUsage(**{**vars(usage), "service_tier": tier}))
        for tier in (None, "priority", "flex", None, "priority")
    }
    assert costs["priority"] == _genai("gpt-5", usage, "priority") > costs[None]
    assert costs["flex"] == _genai("gpt-5", usage, "flex") < costs[None]
    assert costs[None] == _genai("gpt-5", usage, None)


@pytest.mark.parametrize("tier", [None, "auto", "default", "scale"])
def test_the_standard_tiers_take_the_standard_path(
    tier: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no(*args: Any) -> None:
        raise AssertionError("a standard tier looked up a tier's rates")

    monkeypatch.setattr(pricing, "_tier_rates_of", no)
    usage = TokenUsage(input_tokens=1_000, output_tokens=100, service_tier=tier)
    assert usage_cost("gpt-5", usage) == _genai("gpt-5", usage, None)
    assert estimate_cost("gpt-5", 1_000, 100, service_tier=tier) == usage_cost("gpt-5", usage)


def test_a_tier_without_prices_is_priced_at_the_standard_ones_times_its_bound() -> None:
    usage = TokenUsage(input_tokens=1_000, output_tokens=100, service_tier="ultrafast")
    bound = pricing.unpriced_tier_bound("gpt-5", "ultrafast")
    assert bound > 1  # tests/test_tier_bounds.py: what the bound is
    assert usage_cost("gpt-5", usage) == _genai("gpt-5", usage, None) * bound
    assert tier_unpriced("gpt-5", "ultrafast") and tier_unpriced("gpt-5-nano", "priority")
    # A cheaper tier without prices of its own is priced (at the standard ones: an upper
    # bound); a standard one always is.
    assert not tier_unpriced("gpt-4o-mini", "flex") and not tier_unpriced("gpt-5", "default")


def test_estimate_cost_takes_a_tier() -> None:
    usage = TokenUsage(input_tokens=1_000, output_tokens=100, cached_input_tokens=10)
    assert estimate_cost(
        "gpt-5", 1_000, 100, cached_input_tokens=10, service_tier="priority"
    ) == _genai("gpt-5", usage, "priority")
    with pytest.raises(InvalidRequestError, match="service_tier"):
        estimate_cost("gpt-5", 1, 1, service_tier=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="service_tier"):
        usage_cost("gpt-5", TokenUsage(input_tokens=1, service_tier=["priority"]))  # type: ignore[arg-type]


def test_a_model_registered_with_its_own_prices_has_no_tier_prices(
    registered: list[str],
) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    register_model(name, like="gpt-5", input_usd_per_mtok="1", output_usd_per_mtok="2")
    assert tier_unpriced(name, "priority") and not tier_unpriced(name, "flex")
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, service_tier="priority")
    # Its own (standard) prices, times Priority's bound: registered prices have no tiers.
    assert usage_cost(name, usage) == Decimal(3) * pricing.unpriced_tier_bound(name, "priority")
