"""USD costs (guardrail.catalog.pricing): exact Decimals, checked by hand and with genai-prices."""

from __future__ import annotations

import random
import uuid
import warnings
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from anthropic.types import Usage as AnthropicUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices
from openai.types import CompletionUsage

from guardrail.catalog import pricing
from guardrail.catalog.models import list_models, model_info, register_model
from guardrail.catalog.pricing import (
    TokenUsage,
    estimate_cost,
    prices_per_million,
    usage_cost,
    usage_from_sdk,
)
from guardrail.errors import InvalidRequestError, PriceUnavailable

MTOK = Decimal(1_000_000)


def _genai_price(model: str, provider: str) -> ModelPrice:
    """The per-million prices, straight from genai-prices (not through guardrail)."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=0, output_tokens=0), model, provider_id=provider
    )
    return calc.model_price


def _flat(price: Any) -> Decimal:
    assert isinstance(price, Decimal), f"expected a flat price, got {price!r}"
    return price


def _genai_total(model: str, provider: str, usage: TokenUsage) -> Decimal:
    return genai_prices.calc_price(usage.to_genai(), model, provider_id=provider).total_price


# --------------------------------------------------------------------------- estimate_cost


def test_the_documented_example() -> None:
    cost = estimate_cost("gpt-4o", input_tokens=1000, output_tokens=500)
    assert cost == Decimal("0.0075")
    assert isinstance(cost, Decimal)


def test_cached_input_tokens_at_the_cached_rate() -> None:
    p = _genai_price("gpt-4o", "openai")
    rate_in, rate_cached, rate_out = (
        _flat(p.input_mtok),
        _flat(p.cache_read_mtok),
        _flat(p.output_mtok),
    )
    assert rate_cached < rate_in
    cost = estimate_cost("gpt-4o", 10_000, 2_000, cached_input_tokens=6_000)
    assert cost == (4_000 * rate_in + 6_000 * rate_cached + 2_000 * rate_out) / MTOK
    assert estimate_cost("gpt-4o", 10_000, 0, cached_input_tokens=10_000) == (
        10_000 * rate_cached / MTOK
    )


def test_model_without_a_cached_price_bills_cached_tokens_as_input() -> None:
    p = _genai_price("gpt-3.5-turbo", "openai")
    assert p.cache_read_mtok is None
    with_cache = estimate_cost("gpt-3.5-turbo", 1_000, 100, cached_input_tokens=600)
    assert with_cache == estimate_cost("gpt-3.5-turbo", 1_000, 100)
    assert with_cache == (1_000 * _flat(p.input_mtok) + 100 * _flat(p.output_mtok)) / MTOK


def test_zero_tokens_cost_zero() -> None:
    assert estimate_cost("gpt-4o", 0, 0) == 0
    assert isinstance(estimate_cost("claude-sonnet-4-5", 0, 0), Decimal)


def test_tiered_prices_gpt_5_4_above_272k() -> None:
    p = _genai_price("gpt-5.4", "openai")
    assert isinstance(p.input_mtok, TieredPrices) and isinstance(p.output_mtok, TieredPrices)
    (tier_in,) = p.input_mtok.tiers
    (tier_out,) = p.output_mtok.tiers
    assert tier_in.start == 272_000
    below = estimate_cost("gpt-5.4", 272_000, 1_000)
    above = estimate_cost("gpt-5.4", 272_001, 1_000)
    # At the threshold: base rates; one token above: the tier rate for every token.
    assert below == (272_000 * p.input_mtok.base + 1_000 * p.output_mtok.base) / MTOK
    assert above == (272_001 * tier_in.price + 1_000 * tier_out.price) / MTOK
    for n_in, n_out, cached in [(272_000, 1_000, 0), (272_001, 1_000, 0), (400_000, 9, 300_000)]:
        usage = TokenUsage(input_tokens=n_in, output_tokens=n_out, cached_input_tokens=cached)
        assert estimate_cost("gpt-5.4", n_in, n_out, cached_input_tokens=cached) == _genai_total(
            "gpt-5.4", "openai", usage
        )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_tokens": -1, "output_tokens": 0}, "input_tokens"),
        ({"input_tokens": 0, "output_tokens": -1}, "output_tokens"),
        ({"input_tokens": 1.5, "output_tokens": 0}, "input_tokens"),
        ({"input_tokens": "10", "output_tokens": 0}, "input_tokens"),
        ({"input_tokens": True, "output_tokens": 0}, "input_tokens"),
        ({"input_tokens": 10, "output_tokens": None}, "output_tokens"),
        ({"input_tokens": 10, "output_tokens": 0, "cached_input_tokens": -1}, "cached"),
        ({"input_tokens": 10, "output_tokens": 0, "cached_input_tokens": 11}, "cached"),
    ],
)
def test_bad_counts_are_invalid_requests(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        estimate_cost("gpt-4o", **kwargs)


def test_unpriced_models() -> None:
    # gpt-6.2-astra resolves (a gpt-6) but the price data has no price for it yet.
    info = model_info("gpt-6.2-astra", strict=True)
    with pytest.raises(PriceUnavailable) as err:
        estimate_cost(info, 1, 1)
    assert err.value.model == "gpt-6.2-astra" and isinstance(err.value, LookupError)
    assert prices_per_million(info) == (None, None)


def test_prices_per_million() -> None:
    p = _genai_price("gpt-4o", "openai")
    assert prices_per_million("gpt-4o") == (p.input_mtok, p.output_mtok)
    tiered = _genai_price("gpt-5.4", "openai")
    assert isinstance(tiered.input_mtok, TieredPrices)
    assert isinstance(tiered.output_mtok, TieredPrices)
    assert prices_per_million("gpt-5.4") == (tiered.input_mtok.base, tiered.output_mtok.base)


def test_every_cost_is_a_decimal() -> None:
    rng = random.Random(7)
    for info in list_models():
        for _ in range(3):
            n_in = rng.randrange(0, 500_000)
            cost = estimate_cost(
                info, n_in, rng.randrange(0, 50_000), cached_input_tokens=n_in // 3
            )
            assert isinstance(cost, Decimal) and cost >= 0, info.name


# --------------------------------------------------------------------------- usage_cost


def test_usage_cost_openai_completion_usage_by_hand() -> None:
    usage = CompletionUsage(
        prompt_tokens=2_000,
        completion_tokens=700,
        total_tokens=2_700,
        prompt_tokens_details={"cached_tokens": 1_200},
        completion_tokens_details={"reasoning_tokens": 300},
    )
    p = _genai_price("o3", "openai")
    # Reasoning tokens are part of completion_tokens: billed once, as output.
    expected = (
        800 * _flat(p.input_mtok) + 1_200 * _flat(p.cache_read_mtok) + 700 * _flat(p.output_mtok)
    ) / MTOK
    cost = usage_cost("o3", usage)
    assert cost == expected and isinstance(cost, Decimal)
    assert usage_cost("o3", usage.model_dump()) == expected  # a dict works too
    normalised = usage_from_sdk(usage, provider="openai")
    assert normalised == TokenUsage(
        input_tokens=2_000, output_tokens=700, cached_input_tokens=1_200, reasoning_tokens=300
    )


def test_usage_cost_openai_without_details() -> None:
    usage = CompletionUsage(prompt_tokens=1_000, completion_tokens=500, total_tokens=1_500)
    assert usage_cost("gpt-4o", usage) == Decimal("0.0075")


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5"])
def test_usage_cost_anthropic_usage_by_hand(model: str) -> None:
    usage = AnthropicUsage(
        input_tokens=100,  # uncached only: Anthropic excludes cache reads and writes
        output_tokens=50,
        cache_read_input_tokens=1_000,
        cache_creation_input_tokens=700,
        cache_creation={"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 400},
    )
    p = _genai_price(model, "anthropic")

    def base(price: Any) -> Decimal:  # prompts this small are under every tier
        return price.base if isinstance(price, TieredPrices) else _flat(price)

    expected = (
        100 * base(p.input_mtok)
        + 1_000 * base(p.cache_read_mtok)
        + 300 * base(p.cache_write_mtok)  # 5-minute writes
        + 400 * base(p.cache_write_1h_mtok)
        + 50 * base(p.output_mtok)
    ) / MTOK
    assert base(p.cache_write_1h_mtok) > base(p.cache_write_mtok) > base(p.input_mtok)
    cost = usage_cost(model, usage)
    assert cost == expected and isinstance(cost, Decimal)
    assert usage_from_sdk(usage, provider="anthropic") == TokenUsage(
        input_tokens=1_800,
        output_tokens=50,
        cached_input_tokens=1_000,
        cache_write_tokens=700,
        cache_write_1h_tokens=400,
    )


def test_usage_cost_anthropic_writes_without_ttl_breakdown_are_5m() -> None:
    usage = AnthropicUsage(
        input_tokens=10, output_tokens=5, cache_read_input_tokens=0, cache_creation_input_tokens=90
    )
    p = _genai_price("claude-haiku-4-5", "anthropic")
    expected = (
        10 * _flat(p.input_mtok) + 90 * _flat(p.cache_write_mtok) + 5 * _flat(p.output_mtok)
    ) / MTOK
    assert usage_cost("claude-haiku-4-5", usage) == expected


def test_usage_cost_with_token_usage_and_registered_prices(registered: list[str]) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    register_model(name, like="gpt-4o", input_usd_per_mtok="2", output_usd_per_mtok="8")
    usage = TokenUsage(input_tokens=1_000, output_tokens=1_000, cached_input_tokens=500)
    # No cached price given: cached tokens at the input price.
    assert usage_cost(name, usage) == Decimal("0.010")


@pytest.mark.parametrize(
    "usage",
    [
        TokenUsage(input_tokens=-1),
        TokenUsage(output_tokens=-3),
        TokenUsage(input_tokens=10, cached_input_tokens=11),
        TokenUsage(input_tokens=10, cache_write_tokens=5, cache_write_1h_tokens=6),
        TokenUsage(input_tokens=1.5),  # type: ignore[arg-type]
        {"prompt_tokens": "many", "completion_tokens": 1},
        object(),
    ],
)
def test_usage_cost_rejects_bad_usage(usage: Any) -> None:
    with pytest.raises(InvalidRequestError):
        usage_cost("gpt-4o", usage)


# --------------------------------------------------------------------------- fast path


FAST_MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1", "openai"),
    ("gpt-3.5-turbo", "openai"),
    ("o3", "openai"),  # prices with start dates
    ("gpt-5.4", "openai"),  # tiered
    ("gpt-5.6-sol", "openai"),
    ("gpt-6-sol", "openai"),
    ("claude-haiku-4-5", "anthropic"),
    ("claude-sonnet-4-5", "anthropic"),  # tiered
    ("claude-opus-4-6", "anthropic"),
]


def _random_usage(rng: random.Random, *, writes: bool) -> TokenUsage:
    n_in = rng.choice([0, 1, rng.randrange(1, 5_000), rng.randrange(0, 1_200_000)])
    cached = rng.choice([0, n_in, rng.randrange(0, n_in + 1)])
    cache_write = rng.randrange(0, n_in - cached + 1) if writes else 0
    return TokenUsage(
        input_tokens=n_in,
        output_tokens=rng.choice([0, rng.randrange(0, 200_000)]),
        cached_input_tokens=cached,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=rng.randrange(0, cache_write + 1) if writes else 0,
    )


@pytest.mark.parametrize(("model", "provider"), FAST_MODELS)
def test_fast_path_equals_calc_price(
    model: str, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = model_info(model, strict=True)
    assert pricing._resolve_price(info.price_ref or model, provider).flat is not None
    rng = random.Random(f"fast-{model}")
    usages = [_random_usage(rng, writes=False) for _ in range(400)]
    expected = [_genai_total(model, provider, u) for u in usages]
    calls = 0
    real = genai_prices.calc_price

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(genai_prices, "calc_price", counting)
    got = [usage_cost(info, u) for u in usages]
    assert got == expected
    assert all(isinstance(c, Decimal) for c in got)
    assert calls == 0, "the fast path must not call genai_prices.calc_price"


@pytest.mark.parametrize(("model", "provider"), FAST_MODELS)
def test_usages_with_cache_writes_match_calc_price(model: str, provider: str) -> None:
    rng = random.Random(f"writes-{model}")
    for _ in range(60):
        usage = _random_usage(rng, writes=True)
        assert usage_cost(model, usage) == _genai_total(model, provider, usage), usage


def test_models_with_other_priced_units_take_the_slow_path() -> None:
    # Audio prices: a TokenUsage cannot report audio tokens, so leave it to calc_price.
    info = model_info("gpt-audio-mini", strict=True)
    assert pricing._resolve_price(info.price_ref or info.name, "openai").flat is None
    usage = TokenUsage(input_tokens=1_000, output_tokens=100, cached_input_tokens=10)
    assert usage_cost(info, usage) == _genai_total("gpt-audio-mini", "openai", usage)


def test_time_of_day_prices_take_the_slow_path(registered: list[str]) -> None:
    # deepseek's off-peak prices change within the hour: never cached as flat.
    registered.append("deepseek-chat")
    register_model(
        "deepseek-chat", provider="unknown", context_window=64_000, max_output_tokens=8_000
    )
    assert pricing._resolve_price("deepseek-chat", None).flat is None
    usage = TokenUsage(input_tokens=1_000, output_tokens=100, cached_input_tokens=100)
    expected = genai_prices.calc_price(usage.to_genai(), "deepseek-chat").total_price
    assert usage_cost("deepseek-chat", usage) == expected


def test_price_cache_is_per_hour_and_per_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = genai_prices.calc_price

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    now = [1_800_000_000.0]
    monkeypatch.setattr(pricing.time, "time", lambda: now[0])
    monkeypatch.setattr(genai_prices, "calc_price", counting)
    estimate_cost("gpt-4o", 10, 10)  # resolves (new hour for the cache)
    first = calls
    assert first == 1
    estimate_cost("gpt-4o", 20, 20)
    assert calls == first  # same hour: cached
    now[0] += 3_600
    estimate_cost("gpt-4o", 10, 10)
    assert calls == first + 1  # next hour: resolved again
    fresh = data_snapshot.DataSnapshot(
        providers=data_snapshot.get_snapshot().providers, from_auto_update=True
    )
    data_snapshot.set_custom_snapshot(fresh)
    try:
        estimate_cost("gpt-4o", 10, 10)
        assert calls == first + 2  # updated price data: resolved again
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_unknown_models_are_not_priced_through_the_cache() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = model_info(f"nothing-{uuid.uuid4().hex[:8]}")
    for _ in range(2):  # the cached miss raises as the first lookup did
        with pytest.raises(PriceUnavailable):
            estimate_cost(info, 1, 1)


@pytest.mark.parametrize(("model", "provider"), FAST_MODELS)
def test_flat_prices_are_priced_by_integer_rates(model: str, provider: str) -> None:
    # Every flat price in today's data has at most six decimals per million tokens, so the
    # per-call path prices in whole pico-dollars; a tiered price takes the Decimal way.
    info = model_info(model, strict=True)
    usage = TokenUsage(input_tokens=1_234, output_tokens=567, cached_input_tokens=200)
    pico = pricing._pico_cost(info, usage)
    tiered = any(
        not isinstance(p, (Decimal, type(None)))
        for p in pricing._resolve_price(info.price_ref or model, provider).flat or ()
    )
    assert (pico is None) == tiered
    if pico is not None:
        assert Decimal(pico) / 10**12 == _genai_total(model, provider, usage)


def test_prices_of_more_than_six_decimals_take_the_decimal_way(registered: list[str]) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    register_model(
        name,
        like="gpt-4o",
        input_usd_per_mtok="0.1234567",  # 123,456.7 pico-dollars a token: not whole
        output_usd_per_mtok="3",
        cached_input_usd_per_mtok="0",
    )
    info = model_info(name)
    usage = TokenUsage(input_tokens=1_000, output_tokens=10, cached_input_tokens=400)
    assert pricing._pico_cost(info, usage) is None
    assert usage_cost(info, usage) == (600 * Decimal("0.1234567") + 10 * 3) / MTOK


def test_a_zero_cached_price_is_a_price_not_a_missing_one(registered: list[str]) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    register_model(
        name,
        like="gpt-4o",
        input_usd_per_mtok="2",
        output_usd_per_mtok="8",
        cached_input_usd_per_mtok="0",
    )
    usage = TokenUsage(input_tokens=1_000, output_tokens=0, cached_input_tokens=1_000)
    assert pricing._pico_cost(model_info(name), usage) == 0
    assert usage_cost(name, usage) == 0


# --------------------------------------------------------------- cache writes and fees


FEES = TokenUsage(
    input_tokens=5_000,
    output_tokens=200,
    cached_input_tokens=1_000,
    cache_write_tokens=3_000,
    cache_write_1h_tokens=1_000,
    web_searches=3,
)


def test_a_registered_model_prices_cache_writes_and_searches_like_its_base(
    registered: list[str],
) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    # claude-haiku-4-5's own token prices, given explicitly: the same cost to the last digit.
    register_model(
        name,
        like="claude-haiku-4-5",
        input_usd_per_mtok=1,
        output_usd_per_mtok=5,
        cached_input_usd_per_mtok="0.1",
    )
    expected = _genai_total("claude-haiku-4-5", "anthropic", FEES)
    assert expected > Decimal("0.03")  # 3 searches at $10 per 1,000, writes at 1.25x / 2x
    assert usage_cost(name, FEES) == usage_cost("claude-haiku-4-5", FEES) == expected


def test_a_fee_without_a_rate_is_unavailable_not_free(registered: list[str]) -> None:
    # Registered from scratch: nothing knows its search or cache-write rates.
    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    register_model(
        name,
        provider="anthropic",
        context_window=200_000,
        max_output_tokens=8_000,
        input_usd_per_mtok=1,
        output_usd_per_mtok=5,
    )
    with pytest.raises(PriceUnavailable, match="no web search price") as caught:
        usage_cost(name, TokenUsage(input_tokens=10, web_searches=1))
    assert caught.value.missing == "web search" and "like=" in str(caught.value)
    with pytest.raises(PriceUnavailable, match="no cache write price"):
        usage_cost(name, TokenUsage(input_tokens=10, cache_write_tokens=10))
    # Like a model without cache writes (OpenAI's): its cache writes are not priced as input.
    other = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(other)
    register_model(other, like="gpt-4o", input_usd_per_mtok=2, output_usd_per_mtok=8)
    with pytest.raises(PriceUnavailable, match="1-hour cache write"):
        usage_cost(
            other, TokenUsage(input_tokens=10, cache_write_tokens=10, cache_write_1h_tokens=10)
        )
    # A catalog model whose price data has no file-search rate (Anthropic's): was $0.
    with pytest.raises(PriceUnavailable, match="no file search price"):
        usage_cost("claude-haiku-4-5", TokenUsage(input_tokens=10, file_searches=2))


def test_a_search_without_a_rate_is_refused_under_a_money_limit(
    registered: list[str], fake: Any
) -> None:
    import anthropic

    from guardrail import Guard, Policy

    name = f"acme-{uuid.uuid4().hex[:8]}"
    registered.append(name)
    register_model(
        name,
        provider="anthropic",
        encoding="claude",
        context_window=200_000,
        max_output_tokens=8_000,
        input_usd_per_mtok=1,
        output_usd_per_mtok=5,
    )
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    hi = [{"role": "user", "content": "Hello there"}]
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0)
    capped = Guard(Policy(daily_spend_usd=1, loop_limit=None)).wrap(raw)
    with pytest.raises(PriceUnavailable, match="no web search price"):
        capped.messages.create(model=name, max_tokens=100, messages=hi, tools=[search])
    assert fake.message_requests == []  # refused before anything was sent
    # Without a money limit the call goes through, its tokens priced (the search is not).
    records: list[Any] = []
    free = Guard(Policy(loop_limit=None), sinks=[records.append]).wrap(raw)
    free.messages.create(model=name, max_tokens=100, messages=hi, tools=[search])
    assert records[-1].cost_usd > 0
