"""A call billed at a service tier the price data has no prices for on its model is charged
at the standard prices times the tier's bound (guardrail.catalog.tier_bounds): the largest
factor of that tier on any model of the provider, read from the price data. The expected
factors are measured here another way: genai-prices' own ``calc_price`` of the same usage
with and without the tier as its price context, for every OpenAI model it prices."""

from __future__ import annotations

import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import genai_prices
import pytest

from guardrail.catalog import tier_bounds
from guardrail.catalog.pricing import (
    TokenUsage,
    estimate_cost,
    tier_unpriced,
    unpriced_tier_bound,
    usage_cost,
)

# Usages that isolate each price: input only, output only, cache reads.
PROBES = (
    genai_prices.Usage(input_tokens=1_000_000, output_tokens=0),
    genai_prices.Usage(input_tokens=0, output_tokens=1_000_000),
    genai_prices.Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000, output_tokens=0),
)


def _ratios(tier: str) -> list[Decimal]:
    """calc_price at ``tier`` over calc_price at the standard prices, per probe, for every
    OpenAI model whose price the tier changes."""
    found = []
    for provider in genai_prices.data_snapshot.get_snapshot().providers:
        if provider.id != "openai":
            continue
        for model in provider.models:
            for usage in PROBES:
                try:
                    plain = genai_prices.calc_price(usage, model.id, provider_id="openai")
                    tiered = genai_prices.calc_price(
                        usage, model.id, provider_id="openai", price_context={"service_tier": tier}
                    )
                except (LookupError, ValueError):
                    continue
                if plain.total_price > 0 and tiered.total_price != plain.total_price:
                    found.append(tiered.total_price / plain.total_price)
    return found


@pytest.mark.parametrize("tier", ["priority", "fast"])
def test_the_bound_is_the_largest_factor_the_tier_has_in_the_data(tier: str) -> None:
    ratios = _ratios(tier)
    assert len(ratios) > 10  # the data prices the tier on many models
    bound = unpriced_tier_bound("gpt-5-nano", tier)
    assert all(bound >= r for r in ratios)  # never below what any model is billed at
    assert bound - max(ratios) < Decimal("0.001")  # and rounded up by less than 0.001


def test_a_tier_the_data_never_saw_gets_the_largest_factor_of_any_tier() -> None:
    every = _ratios("priority") + _ratios("fast")
    bound = unpriced_tier_bound("gpt-4o", f"tier-{uuid.uuid4().hex[:6]}")
    assert all(bound >= r for r in every) and bound - max(every) < Decimal("0.001")


def test_a_cheaper_tier_is_never_a_factor() -> None:
    assert max(_ratios("flex")) < 1  # flex is cheaper: it is left out of the bounds
    assert not tier_unpriced("gpt-5-nano", "flex")
    assert estimate_cost("gpt-5-nano", 1000, 1000, service_tier="flex") <= estimate_cost(
        "gpt-5-nano", 1000, 1000
    )


@pytest.mark.parametrize("tier", ["priority", "ultrafast"])
def test_the_integer_and_decimal_paths_agree(tier: str) -> None:
    # gpt-5-nano's flat prices take the integer path; a cache write takes the Decimal one.
    assert tier_unpriced("gpt-5-nano", tier)
    bound = unpriced_tier_bound("gpt-5-nano", tier)
    plain = TokenUsage(input_tokens=12_345, output_tokens=678, cached_input_tokens=345)
    tiered = TokenUsage(
        input_tokens=12_345, output_tokens=678, cached_input_tokens=345, service_tier=tier
    )
    assert usage_cost("gpt-5-nano", tiered) == usage_cost("gpt-5-nano", plain) * bound
    searched = TokenUsage(input_tokens=1_000, output_tokens=10, web_searches=2)
    with_fee = usage_cost("gpt-5-nano", TokenUsage(**{**vars(searched), "service_tier": tier}))
    tokens_only = usage_cost("gpt-5-nano", TokenUsage(input_tokens=1_000, output_tokens=10))
    # The fee is not multiplied, the tokens are.
    assert with_fee == usage_cost("gpt-5-nano", searched) + tokens_only * (bound - 1)


def _snapshot(*models: Any, provider: str = "openai") -> Any:
    return SimpleNamespace(providers=[SimpleNamespace(id=provider, models=list(models))])


def _model(base: dict[str, Decimal], **tiers: dict[str, Decimal]) -> Any:
    variants = [
        SimpleNamespace(when={"service_tier": t}, prices=SimpleNamespace(**p))
        for t, p in tiers.items()
    ]
    return SimpleNamespace(prices=SimpleNamespace(**base), price_variants=variants)


def test_factors_are_rounded_up_and_kept_per_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"input_mtok": Decimal(3), "output_mtok": Decimal(12)}
    data = _snapshot(
        _model(base, priority={"input_mtok": Decimal(5), "output_mtok": Decimal(20)}),
        _model(base, flex={"input_mtok": Decimal("1.5")}, default={"input_mtok": Decimal(9)}),
    )
    monkeypatch.setattr(tier_bounds.data_snapshot, "get_snapshot", lambda: data)
    monkeypatch.setattr(tier_bounds, "_cached", None)
    assert tier_bounds.unpriced_tier_factor("openai", "priority") == Decimal("1.667")  # 5/3, up
    assert tier_bounds.unpriced_tier_factor("openai", "other") == Decimal("1.667")
    # A provider without tier prices gets the tier's factor wherever the data has it.
    assert tier_bounds.unpriced_tier_factor("azure", "priority") == Decimal("1.667")
    empty = _snapshot(_model(base))
    monkeypatch.setattr(tier_bounds.data_snapshot, "get_snapshot", lambda: empty)
    assert tier_bounds.unpriced_tier_factor("openai", "priority") == tier_bounds.FALLBACK_FACTOR
