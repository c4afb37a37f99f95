"""Issue 13: the catalog's figures and their sources, input caps, names on other
platforms, fine-tune prices, unpriced models, the prices ModelInfo shows, Responses and
embeddings usage."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from genai_prices import data_snapshot
from openai.types.responses import ResponseUsage

import guardrail
from guardrail import ContextWindowExceeded, Guard, Policy
from guardrail.catalog.models import (
    catalog_data,
    list_models,
    model_info,
    register_model,
    unregister_model,
)
from guardrail.catalog.pricing import TokenUsage, estimate_cost, usage_cost, usage_from_sdk
from guardrail.engine.plan import input_budget
from guardrail.errors import InvalidRequestError, PriceUnavailable
from guardrail.prompt.allocation import TokenBudget

WINDOW_TOLERANCE = 0.05
"""The most models.json's window (the provider's page) and genai-prices' may differ."""


# --------------------------------------------------------------------- the sources


def test_every_family_and_rule_names_its_source() -> None:
    data = catalog_data()
    for section in ("families", "images", "text", "fine_tunes"):
        for name, entry in data[section].items():
            if name.startswith("_"):
                continue
            assert isinstance(entry.get("source"), str) and entry["source"], (section, name)
    for name, family in data["families"].items():
        assert family["source"].startswith("https://"), name
        for ref, section in (("image", "images"), ("text", "text")):
            if ref in family:
                assert family[ref] in data[section], (name, family[ref])


def _windows_to_check() -> list[str]:
    return [n for n in catalog_data()["catalog"] if n.startswith(("gpt", "o", "claude", "text"))]


@pytest.mark.parametrize("name", _windows_to_check())
def test_catalog_windows_agree_with_the_price_data(name: str) -> None:
    """models.json (the provider's page) against genai-prices, for the models we list: a
    window that drifts more than the tolerance in either source fails here. Models the
    price data adds later are not ours to check; ones it has no window for are skipped."""
    info = model_info(name, strict=True)
    family = catalog_data()["families"][info.family]
    try:
        _, found = data_snapshot.get_snapshot().find_provider_model(
            info.price_ref or name, None, info.price_provider or info.provider, None
        )
    except LookupError:
        pytest.skip(f"genai-prices does not list {name}")
    if not found.context_window:
        pytest.skip(f"genai-prices has no window for {name}")
    if "window_differs" in family:
        # A documented disagreement (the price data matches the name to another entry).
        assert found.context_window != info.context_window, family["window_differs"]
        return
    gap = abs(found.context_window - info.context_window)
    assert gap <= WINDOW_TOLERANCE * max(found.context_window, info.context_window), (
        f"{name}: models.json says {info.context_window:,}, genai-prices "
        f"{found.context_window:,}; check the provider's page ({family['source']})"
    )


@pytest.mark.parametrize(
    ("name", "window", "max_output", "max_input"),
    [
        # The seven figures issue 13 found too small (or too large), from the model pages.
        ("claude-sonnet-4-6", 1_000_000, 128_000, None),
        ("gpt-5-pro", 400_000, 272_000, None),
        ("gpt-4.1", 1_047_576, 32_768, None),
        ("gpt-4.1-mini", 1_047_576, 32_768, None),
        ("gpt-4.1-nano-2025-04-14", 1_047_576, 32_768, None),
        ("gpt-5.5", 1_050_000, 128_000, None),
        ("gpt-4-32k", 32_768, 8_192, None),
        ("gpt-4o-realtime-preview", 32_000, 4_096, None),
        ("gpt-4o-mini-realtime-preview", 16_000, 4_096, None),
        # The 272K input cap of the 400K gpt-5 family.
        ("gpt-5", 400_000, 128_000, 272_000),
        ("gpt-5-mini", 400_000, 128_000, 272_000),
        ("gpt-5-nano-2025-08-07", 400_000, 128_000, 272_000),
        ("gpt-5.1", 400_000, 128_000, 272_000),
        ("gpt-5.2", 400_000, 128_000, 272_000),
        ("gpt-5.4", 1_050_000, 128_000, None),
    ],
)
def test_figures_from_the_model_pages(
    name: str, window: int, max_output: int, max_input: int | None
) -> None:
    info = model_info(name, strict=True)
    assert (info.context_window, info.max_output_tokens, info.max_input_tokens) == (
        window,
        max_output,
        max_input,
    )
    assert info.sources["figures"].startswith("https://")


# --------------------------------------------------------------------- the input cap


def test_input_budget_is_the_smallest_limit() -> None:
    gpt5 = model_info("gpt-5")
    assert input_budget(gpt5, Policy(), 1_000) == (272_000, "the input limit of gpt-5")
    assert input_budget(gpt5, Policy(), 100_000) == (272_000, "the input limit of gpt-5")
    assert input_budget(gpt5, Policy(), 128_000) == (272_000, "the context window of gpt-5")
    assert input_budget(gpt5, Policy(), 200_000) == (200_000, "the context window of gpt-5")
    assert input_budget(gpt5, Policy(max_input_tokens=50_000), 1_000)[0] == 50_000
    assert model_info("gpt-5").input_limit == 272_000
    assert model_info("gpt-4o").input_limit == 128_000


def test_token_budget_respects_the_input_cap() -> None:
    assert TokenBudget("gpt-5", reserve_output=1_000).limit == 272_000
    assert TokenBudget("gpt-5", reserve_output=200_000).limit == 200_000
    assert TokenBudget("gpt-5", reserve_output=1_000, context_window=100_000).limit == 99_000


def _make(server: Any, policy: Policy, **kw: Any) -> tuple[Guard, Any]:
    raw = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    guard = Guard(policy, **kw)
    return guard, guard.wrap(raw)


# 300,000 tokens: below gpt-5's window less 1,000 tokens of output, above its input cap.
BIG = [{"role": "user", "content": "hello " * 300_000}]


def test_a_prompt_over_the_272k_input_cap_is_refused_before_sending(server) -> None:
    guard, client = _make(server, Policy())
    with pytest.raises(ContextWindowExceeded) as err:
        client.chat.completions.create(model="gpt-5", messages=BIG, max_completion_tokens=1000)
    assert err.value.limit == 272_000 and "input limit of gpt-5" in str(err.value)
    assert server.requests == []


def test_a_prompt_over_the_input_cap_falls_back_to_a_model_without_one(server) -> None:
    guard, client = _make(server, Policy(fallback_models=("gpt-5-mini", "gpt-4.1")))
    out = client.chat.completions.create(model="gpt-5", messages=BIG, max_completion_tokens=10)
    assert out.model.startswith("gpt-4.1")
    assert server.requests[-1].json["model"] == "gpt-4.1"


# --------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "family", "encoding"),
    [
        ("gpt-35-turbo", "gpt-3.5-turbo", "cl100k_base"),
        ("azure/gpt-35-turbo-16k", "gpt-3.5-turbo", "cl100k_base"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet", "claude"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4", "claude"),
        ("eu.anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4", "claude"),
        ("apac.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku", "claude"),
        ("global.anthropic.claude-opus-4-7-v1:0", "claude-opus-4-7", "claude"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "claude-sonnet-4",
            "claude",
        ),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet", "claude"),
        ("claude-opus-4-1@20250805", "claude-opus-4", "claude"),
        ("publishers/anthropic/models/claude-sonnet-4-5@20250929", "claude-sonnet-4", "claude"),
        ("ft:gpt-4o-mini:org::id", "gpt-4o-mini", "o200k_base"),
        ("ft:gpt-4.1-2025-04-14:acme:support:AbC123", "gpt-4.1", "o200k_base"),
        ("ft:o4-mini-2025-04-16:acme::rft1", "o4-mini", "o200k_base"),
    ],
)
def test_names_from_other_platforms_resolve(name: str, family: str, encoding: str) -> None:
    info = model_info(name, strict=True)
    assert (info.family, info.encoding) == (family, encoding)
    assert info.name == name


def test_azure_gpt_35_turbo_is_the_16k_cl100k_model() -> None:
    info = model_info("gpt-35-turbo", strict=True)
    assert (info.context_window, info.max_output_tokens) == (16_385, 4_096)
    assert guardrail.count_text("hello world", "gpt-35-turbo") == guardrail.count_text(
        "hello world", "gpt-3.5-turbo"
    )
    assert estimate_cost("gpt-35-turbo", 1000, 1000) == estimate_cost("gpt-3.5-turbo", 1000, 1000)


def test_bedrock_ids_are_priced_as_bedrock_prices_them() -> None:
    # Bedrock's regional endpoints cost 10% more than Anthropic's own for Sonnet 4.5;
    # global ones the same: genai-prices' aws entries.
    # 100,000 tokens: below the 200K long-context tier.
    regional = estimate_cost("us.anthropic.claude-sonnet-4-5-20250929-v1:0", 100_000, 0)
    direct = estimate_cost("claude-sonnet-4-5-20250929", 100_000, 0)
    assert (direct, regional) == (Decimal("0.3"), Decimal("0.33"))
    glob = estimate_cost("global.anthropic.claude-sonnet-4-5-20250929-v1:0", 100_000, 0)
    assert glob == Decimal("0.3")
    info = model_info("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert info.price_provider == "aws" and info.input_usd_per_mtok == Decimal("3.3")
    # Bedrock speaks Anthropic's usage shape.
    usage = {"input_tokens": 1000, "output_tokens": 10, "cache_read_input_tokens": 0}
    assert usage_cost(info, usage) == estimate_cost(info, 1000, 10)


def test_vertex_ids_are_priced_as_the_model() -> None:
    assert estimate_cost("claude-sonnet-4-5@20250929", 1000, 500) == estimate_cost(
        "claude-sonnet-4-5", 1000, 500
    )


@pytest.mark.parametrize(
    ("name", "input_price", "output_price", "cached_price"),
    [
        # genai-prices' fine-tune entries (the base snapshot given or not).
        ("ft:gpt-4o-mini:org::id", "0.3", "1.2", None),
        ("ft:gpt-4o-mini-2024-07-18:org::id", "0.3", "1.2", None),
        ("ft:gpt-4o-2024-08-06:org::id", "3.75", "15", None),
        # OpenAI's pricing page, fine-tuning section (models.json's fine_tunes).
        ("ft:gpt-4.1-2025-04-14:org::id", "3.00", "12.00", "0.75"),
        ("ft:gpt-4.1-mini-2025-04-14:org::id", "0.80", "3.20", "0.20"),
        ("ft:gpt-4.1-nano-2025-04-14:org::id", "0.20", "0.80", "0.05"),
        ("ft:o4-mini-2025-04-16:org::id", "4.00", "16.00", "1.00"),
    ],
)
def test_fine_tunes_are_priced(
    name: str, input_price: str, output_price: str, cached_price: str | None
) -> None:
    info = model_info(name, strict=True)
    assert info.input_usd_per_mtok == Decimal(input_price)
    assert info.output_usd_per_mtok == Decimal(output_price)
    assert estimate_cost(name, 1_000_000, 0) == Decimal(input_price)
    assert estimate_cost(name, 0, 1_000_000) == Decimal(output_price)
    if cached_price is not None:
        cost = estimate_cost(name, 1_000_000, 0, cached_input_tokens=1_000_000)
        assert cost == Decimal(cached_price)
    # Never the (lower) base model's price.
    assert estimate_cost(name, 1_000_000, 0) > estimate_cost(info.family or "", 1_000_000, 0)


def test_a_fine_tune_nothing_prices_says_why() -> None:
    with pytest.raises(PriceUnavailable) as err:
        estimate_cost("ft:gpt-5-2025-08-07:org::id", 1, 1)
    message = str(err.value)
    assert "fine-tunes of gpt-5" in message and "register_model" in message


# --------------------------------------------------------------------- unpriced models


@pytest.fixture
def unpriced() -> Iterator[str]:
    name = f"acme-unpriced-{uuid.uuid4().hex[:8]}"
    register_model(name, provider="openai", context_window=32_000, max_output_tokens=1_000)
    yield name
    unregister_model(name)


def test_an_unpriced_model_goes_through_without_money_limits(server, unpriced: str) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = _make(server, Policy(tokens_per_minute=100_000), sinks=[records.append])
    hello = [{"role": "user", "content": "Hello"}]
    with pytest.warns(UserWarning, match=f"no price for model '{unpriced}'"):
        client.chat.completions.create(model=unpriced, messages=hello)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per model, not per call
        client.chat.completions.create(model=unpriced, messages=hello)
    assert len(server.requests) == 2
    assert [r.outcome for r in records] == ["ok", "ok"]
    assert all(r.extra.get("cost_unknown") is True and r.cost_usd == 0 for r in records)
    assert records[0].input_tokens > 0
    assert guard.usage("default").input_tokens > 0  # counted against the token limits


def test_an_unpriced_model_is_refused_under_a_money_limit(server, unpriced: str) -> None:
    guard, client = _make(server, Policy(daily_spend_usd=5))
    with pytest.raises(PriceUnavailable):
        client.chat.completions.create(model=unpriced, messages=[{"role": "user", "content": "x"}])
    assert server.requests == []


# --------------------------------------------------------------------- prices shown


def test_model_info_shows_the_prices_the_cost_functions_use() -> None:
    for info in list_models():
        assert info.input_usd_per_mtok is not None, info.name
        # 1,000 tokens: below every long-context tier, so the base-tier price applies.
        assert estimate_cost(info, 1000, 0) * 1000 == info.input_usd_per_mtok, info.name
        if info.kind == "chat":
            assert info.output_usd_per_mtok is not None, info.name
            assert estimate_cost(info, 0, 1000) * 1000 == info.output_usd_per_mtok, info.name
        if info.cached_input_usd_per_mtok is not None:
            cached = estimate_cost(info, 1000, 0, cached_input_tokens=1000)
            assert cached * 1000 == info.cached_input_usd_per_mtok, info.name
    gpt4o = model_info("gpt-4o")
    assert (gpt4o.input_usd_per_mtok, gpt4o.output_usd_per_mtok) == (Decimal("2.5"), Decimal(10))
    assert gpt4o.price_override is False  # the price data's: tiers and cache writes apply


def test_tiered_prices_show_the_base_tier_and_charge_the_tier() -> None:
    info = model_info("gpt-5.4")
    assert info.input_usd_per_mtok == Decimal("2.5")
    assert estimate_cost(info, 300_000, 0) == 300_000 * Decimal(5) / 1_000_000


# --------------------------------------------------------------------- Responses usage


RESPONSES_USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 300},
    "total_tokens": 1500,
}


def test_usage_cost_reads_a_responses_usage_dict_and_object() -> None:
    expected = estimate_cost("gpt-5", 1000, 500, cached_input_tokens=200)
    assert usage_cost("gpt-5", RESPONSES_USAGE) == expected
    details = {**RESPONSES_USAGE["input_tokens_details"], "cache_write_tokens": 0}  # type: ignore[dict-item]
    sdk = ResponseUsage.model_validate({**RESPONSES_USAGE, "input_tokens_details": details})
    assert usage_cost("gpt-5", sdk) == expected
    assert guardrail.usage_cost("gpt-5", sdk) == expected
    usage = usage_from_sdk(sdk, provider="openai")
    assert usage == TokenUsage(
        input_tokens=1000, output_tokens=500, cached_input_tokens=200, reasoning_tokens=300
    )


def test_a_responses_usage_without_details() -> None:
    bare = {"input_tokens": 10, "output_tokens": 5, "input_tokens_details": None}
    assert usage_cost("gpt-4o", bare) == estimate_cost("gpt-4o", 10, 5)


@pytest.mark.parametrize(
    "bad",
    [
        {"input_tokens": 10},  # no output_tokens
        {"input_tokens": -1, "output_tokens": 5},
        {"input_tokens": "ten", "output_tokens": 5},
    ],
)
def test_a_malformed_responses_usage_is_a_clear_error(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        usage_cost("gpt-5", bad)


# --------------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    ("name", "price"),
    [
        ("text-embedding-3-small", "0.02"),
        ("text-embedding-3-large", "0.13"),
        ("text-embedding-ada-002", "0.1"),
    ],
)
def test_embedding_models(name: str, price: str) -> None:
    info = model_info(name, strict=True)
    assert info.kind == "embedding" and info.provider == "openai"
    assert info.encoding == "cl100k_base" and not info.encoding_assumed
    assert (info.context_window, info.max_input_tokens, info.max_output_tokens) == (8191, 8191, 0)
    assert info.input_usd_per_mtok == Decimal(price) and info.output_usd_per_mtok is None
    assert estimate_cost(name, 1_000_000, 0) == Decimal(price)
    assert usage_cost(name, {"prompt_tokens": 1000, "total_tokens": 1000}) == Decimal(price) / 1000
    assert model_info("gpt-4o").kind == "chat"


# --------------------------------------------------------------------- Claude margins

PROSE = (
    "The quick brown fox jumps over the lazy dog. def main(argv): return sum(map(int, argv)) "
) * 20


@pytest.mark.parametrize(
    ("model", "margin"),
    [
        ("claude-3-5-haiku-latest", "1.25"),
        ("claude-sonnet-4-5", "1.25"),
        ("claude-sonnet-4-6", "1.25"),
        ("claude-opus-4-6", "1.25"),
        ("claude-opus-4-7", "1.85"),  # the new tokenizer: 1.3-1.47x the 4.6 count
        ("claude-opus-4-8", "1.85"),
        ("claude-sonnet-5-5", "1.85"),
        ("claude-fable-5-2", "1.85"),
        ("claude-mythos-5-2", "1.85"),
        ("claude-opus-5", "1.85"),
    ],
)
def test_claude_margin_per_family(model: str, margin: str) -> None:
    info = model_info(model, strict=True)
    assert info.text_margin == float(margin)
    raw = guardrail.count_text(PROSE, "gpt-4o")  # o200k_base
    assert guardrail.count_text(PROSE, model) == -(-raw * int(Decimal(margin) * 100) // 100)


def test_claude_margins_do_not_share_a_cache() -> None:
    text = f"a string counted for two Claude families {uuid.uuid4().hex}"
    old = guardrail.count_text(text, "claude-sonnet-4-6")
    new = guardrail.count_text(text, "claude-opus-4-7")
    assert new > old and guardrail.count_text(text, "claude-sonnet-4-6") == old


def test_claude_opus_4_7_prompt_tools_keep_their_budget() -> None:
    cut = guardrail.truncate_text(PROSE * 5, 300, "claude-opus-4-7")
    assert guardrail.count_text(cut, "claude-opus-4-7") <= 300
    assert guardrail.count_text(cut, "claude-sonnet-4-6") < 300  # the larger margin cut more
    docs = [{"content": PROSE, "score": i} for i in range(4)]
    packed = guardrail.pack_documents(docs, 800, "claude-opus-4-7")
    assert packed.tokens <= 800 and packed.included


def test_pdf_pages_cost_more_on_the_high_resolution_tier() -> None:
    from guardrail.counting.claude import PDF_PAGE_TOKENS, pdf_page_tokens
    from guardrail.counting.messages import counter_for

    assert pdf_page_tokens(counter_for("claude-sonnet-4-6")) == PDF_PAGE_TOKENS
    # 3,000 text tokens at the 1.85 margin (4,440) and a 4,784-token page image.
    assert pdf_page_tokens(counter_for("claude-opus-4-7")) == 4440 + 4784


def test_exact_claude_counting_stays_on_by_default() -> None:
    import anthropic

    client = Guard().wrap(anthropic.Anthropic(api_key="test", base_url="http://127.0.0.1:9"))
    assert client.exact_count is True
