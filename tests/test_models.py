"""The model catalog (guardrail.catalog.models), tested as a demanding user would."""

from __future__ import annotations

import typing
import uuid
import warnings
from decimal import Decimal
from typing import Any

import anthropic.types.model
import genai_prices
import openai.types.shared.chat_model
import pytest
import tiktoken
from genai_prices import data_snapshot

from guardrail.catalog.models import (
    FALLBACK_ENCODING,
    ModelInfo,
    catalog_data,
    list_models,
    model_info,
    normalise_name,
    register_model,
    unregister_model,
)
from guardrail.catalog.pricing import estimate_cost, prices_per_million
from guardrail.errors import (
    ConfigurationError,
    GuardrailError,
    PriceUnavailable,
    UnknownModelError,
)

WINDOW_TOLERANCE = 0.05
"""models.json's windows (provider pages) and genai-prices' may differ by this much."""
DATA_ALARM = (
    "the installed {sdk} SDK lists {name!r} and genai-prices can price it, but "
    "guardrail/data/models.json has no family for it: add one line to 'families' "
    "(and the name to 'catalog')"
)


def _literal_names(tp: Any) -> list[str]:
    """Every string of a Literal, looking inside Unions (anthropic's Model is
    ``Union[Literal[...], str]``)."""
    if typing.get_origin(tp) is typing.Literal:
        return [a for a in typing.get_args(tp) if isinstance(a, str)]
    return [n for arg in typing.get_args(tp) for n in _literal_names(arg)]


def _priced(name: str, provider: str) -> bool:
    try:
        genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1, output_tokens=1), name, provider_id=provider
        )
    except LookupError:
        return False
    return True


OPENAI_NAMES = _literal_names(openai.types.shared.chat_model.ChatModel)
ANTHROPIC_NAMES = _literal_names(anthropic.types.model.Model)
SDK_PRICED = [("openai", n) for n in OPENAI_NAMES if _priced(n, "openai")] + [
    ("anthropic", n) for n in ANTHROPIC_NAMES if _priced(n, "anthropic")
]


def _family_data(info: ModelInfo) -> dict[str, Any]:
    family: dict[str, Any] = catalog_data()["families"][info.family]
    return family


def _unique(prefix: str = "no-such-model") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _register(names: list[str], name: str, **kwargs: Any) -> ModelInfo:
    names.append(name)
    return register_model(name, **kwargs)


# --------------------------------------------------------------------------- SDK coverage


def test_the_alarm_reads_every_name_of_an_sdk_model_type() -> None:
    """The alarm below reads model names out of the SDKs' type hints; this proves that
    reading on types of our own, so that it cannot pass vacuously. Which names an SDK
    release lists is its business: dropping one is not a failure here."""
    chat_model = typing.Literal["gpt-x", "gpt-y"]
    assert _literal_names(chat_model) == ["gpt-x", "gpt-y"]
    assert _literal_names(typing.Union[typing.Literal["claude-x"], str]) == ["claude-x"]  # noqa: UP007
    assert _literal_names(typing.Literal["a", 1, "b"] | None) == ["a", "b"]
    assert _literal_names(str) == []


@pytest.mark.parametrize(("provider", "name"), SDK_PRICED, ids=[n for _, n in SDK_PRICED])
def test_every_priced_sdk_model_resolves_strictly(provider: str, name: str) -> None:
    """The data-update alarm: a new SDK release listing a model we cannot resolve fails here."""
    try:
        info = model_info(name, strict=True)
    except UnknownModelError:
        pytest.fail(DATA_ALARM.format(sdk=provider, name=name))
    assert info.known and info.provider == provider
    assert info.family is not None
    # The family is the longest catalog family that prefixes the name.
    norm = normalise_name(name)
    assert norm == info.family or norm.startswith((info.family + "-", info.family + "."))
    assert info.context_window > 0 and info.max_output_tokens > 0
    if provider == "anthropic":
        assert info.encoding == "claude" and not info.exact_tokenizer
    else:
        tiktoken.get_encoding(info.encoding)  # a real encoding
        try:
            expected = tiktoken.encoding_name_for_model(name)
        except KeyError:
            pass  # an older tiktoken than the catalog was written against: nothing to compare
        else:
            assert info.encoding == expected and not info.encoding_assumed
    # The window is the provider page's (models.json); the price data's agrees within the
    # catalog-source tolerance (tests/test_catalog_sources.py).
    _, found = data_snapshot.get_snapshot().find_provider_model(name, None, provider, None)
    if found.context_window and "window_differs" not in _family_data(info):
        assert abs(info.context_window - found.context_window) <= WINDOW_TOLERANCE * max(
            info.context_window, found.context_window
        )
    # ...and priced under it.
    price_in, price_out = prices_per_million(info)
    assert isinstance(price_in, Decimal) and isinstance(price_out, Decimal)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("gpt-6-sol", "gpt-6"),
        ("gpt-6.1-terra", "gpt-6"),
        ("gpt-5.6-luna", "gpt-5.6"),
        ("gpt-5.5-2026-04-23", "gpt-5.5"),
        ("gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
        ("gpt-5.2-chat-latest", "gpt-5.2-chat"),
        ("gpt-5.1", "gpt-5"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-4.5-preview", "gpt-4.5"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4o-mini-search-preview", "gpt-4o-mini"),
        ("chatgpt-4o-latest", "chatgpt-4o"),
        ("o1-mini-2024-09-12", "o1-mini"),
        ("o1-2024-12-17", "o1"),
        ("o3-mini", "o3-mini"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("codex-mini-latest", "codex-mini"),
        ("gpt-4-turbo-preview", "gpt-4-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-32k-0613", "gpt-4-32k"),
        ("gpt-3.5-turbo-16k", "gpt-3.5-turbo"),
        ("claude-sonnet-5-5", "claude-sonnet-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4"),
        ("claude-sonnet-4-5", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ],
)
def test_family_of_tricky_names(name: str, family: str) -> None:
    assert model_info(name, strict=True).family == family


@pytest.mark.parametrize(
    ("name", "window", "max_output", "encoding"),
    [
        ("gpt-4o", 128_000, 16_384, "o200k_base"),
        ("gpt-4o-2024-05-13", 128_000, 4_096, "o200k_base"),
        ("gpt-4", 8_192, 8_192, "cl100k_base"),
        ("gpt-3.5-turbo", 16_385, 4_096, "cl100k_base"),
        ("gpt-4.1", 1_047_576, 32_768, "o200k_base"),
        ("gpt-4-32k", 32_768, 8_192, "cl100k_base"),
        ("gpt-5.5", 1_050_000, 128_000, "o200k_base"),
        ("gpt-5-pro", 400_000, 272_000, "o200k_base"),
        ("claude-sonnet-4-6", 1_000_000, 128_000, "claude"),
        ("gpt-4o-realtime-preview", 32_000, 4_096, "o200k_base"),
        ("o3", 200_000, 100_000, "o200k_base"),
        ("gpt-6-sol", 1_050_000, 128_000, "o200k_base"),
        ("claude-sonnet-4-5", 200_000, 64_000, "claude"),
        ("claude-opus-4-6", 1_000_000, 128_000, "claude"),
    ],
)
def test_figures_of_well_known_models(
    name: str, window: int, max_output: int, encoding: str
) -> None:
    info = model_info(name, strict=True)
    assert (info.context_window, info.max_output_tokens, info.encoding) == (
        window,
        max_output,
        encoding,
    )


# --------------------------------------------------------------------------- the catalog


def test_list_models_covers_every_generation() -> None:
    names = [i.name for i in list_models()]
    assert len(names) == len(set(names)), "duplicates in the catalog"

    def some(pred: Any) -> bool:
        return any(pred(n) for n in names)

    assert some(lambda n: n.startswith("gpt-6-")) and some(lambda n: n.startswith("gpt-6."))
    assert some(lambda n: n.startswith("gpt-5.")) and "gpt-5" in names
    for name in ("gpt-4.1", "gpt-4o", "gpt-4o-mini", "o1", "o3", "o4-mini", "gpt-4"):
        assert name in names
    assert "gpt-3.5-turbo" in names
    for prefix in ("claude-opus-5", "claude-sonnet-5", "claude-haiku-5"):
        assert some(lambda n, p=prefix: n.startswith(p)), prefix
    assert some(lambda n: n.startswith(("claude-opus-4", "claude-sonnet-4", "claude-haiku-4")))
    assert some(lambda n: n.startswith("claude-3"))


def test_every_catalog_entry_is_known_and_priced() -> None:
    for info in list_models():
        assert info.known and info.provider in ("openai", "anthropic"), info.name
        price_in, price_out = prices_per_million(info)
        assert price_in is not None, f"{info.name} has no price"
        if info.kind == "chat":
            assert price_out is not None, f"{info.name} has no output price"
        else:
            assert info.max_output_tokens == 0 and price_out is None, info.name


def test_gpt6_encodings_are_flagged_assumed() -> None:
    gpt6 = [i for i in list_models() if i.name.startswith("gpt-6")]
    assert len(gpt6) >= 3
    for info in gpt6:
        assert info.encoding == "o200k_base" and info.encoding_assumed, info.name
    for name in (n for n in OPENAI_NAMES if n.startswith("gpt-6")):
        assert model_info(name, strict=True).encoding_assumed, name
    assert not model_info("gpt-4o").encoding_assumed
    assert not model_info("gpt-5.4").encoding_assumed


def test_list_models_includes_registered_models(registered: list[str]) -> None:
    name = _unique("acme-deployment")
    _register(registered, name, like="gpt-4o")
    assert name in [i.name for i in list_models()]
    unregister_model(name)
    assert name not in [i.name for i in list_models()]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "family", "encoding"),
    [
        ("ft:gpt-4o-mini:org::id", "gpt-4o-mini", "o200k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", "gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4o-2024-08-06", "gpt-4o", "o200k_base"),
        ("azure/gpt-4o", "gpt-4o", "o200k_base"),
        ("openai/gpt-4.1", "gpt-4.1", "o200k_base"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4", "claude"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4", "claude"),
        ("  GPT-4o  ", "gpt-4o", "o200k_base"),
    ],
)
def test_name_resolution(name: str, family: str, encoding: str) -> None:
    info = model_info(name, strict=True)
    assert (info.family, info.encoding, info.known) == (family, encoding, True)


def test_provider_prefixed_names_are_priced_as_the_model() -> None:
    base = estimate_cost("gpt-4o", 1000, 500)
    assert estimate_cost("azure/gpt-4o", 1000, 500) == base
    assert estimate_cost("gpt-4o@2024-08-06", 1000, 500) == base
    assert estimate_cost("openai/gpt-4.1", 1000, 500) == estimate_cost("gpt-4.1", 1000, 500)
    sonnet = estimate_cost("claude-sonnet-4-5", 1000, 500)
    assert estimate_cost("anthropic/claude-sonnet-4-5", 1000, 500) == sonnet


def test_fine_tunes_get_fine_tune_prices_or_none() -> None:
    # A real fine-tune name (base snapshot included): genai-prices' fine-tune price, which is
    # above the base model's.
    ft = estimate_cost("ft:gpt-4o-mini-2024-07-18:acme::x1", 1_000_000, 0)
    assert ft > estimate_cost("gpt-4o-mini", 1_000_000, 0)
    # Without the snapshot (gpt-4o-mini has one fine-tunable snapshot): the same price.
    assert estimate_cost("ft:gpt-4o-mini:org::id", 1_000_000, 0) == ft
    # A fine-tune nothing prices is unavailable, never the (lower) base price, and says so.
    with pytest.raises(PriceUnavailable, match="fine-tunes of gpt-5"):
        estimate_cost("ft:gpt-5-2025-08-07:org::id", 1000, 0)


def test_dated_snapshot_shares_the_family_window() -> None:
    assert model_info("gpt-4o-2024-08-06").context_window == model_info("gpt-4o").context_window


# --------------------------------------------------------------------------- unknown models


def test_unknown_model_warns_once_per_name() -> None:
    name, other = _unique(), _unique()
    with pytest.warns(UserWarning, match=name):
        info = model_info(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = model_info(name)
    assert [w for w in caught if name in str(w.message)] == []
    assert again == info
    with pytest.warns(UserWarning, match=other):
        model_info(other)


def test_unknown_model_falls_back_to_o200k() -> None:
    name = _unique()
    with pytest.warns(UserWarning):
        info = model_info(name)
    assert info.encoding == FALLBACK_ENCODING == "o200k_base"
    assert info.encoding_assumed and not info.known
    assert info.provider == "unknown" and info.family is None
    assert info.context_window == 128_000
    with pytest.raises(PriceUnavailable):
        estimate_cost(info, 10, 10)
    assert prices_per_million(info) == (None, None)


def test_unknown_model_strict_raises() -> None:
    name = _unique()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict never warns
        with pytest.raises(UnknownModelError) as err:
            model_info(name, strict=True)
    assert err.value.model == name and name in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, GuardrailError)


@pytest.mark.parametrize("bad", ["", "   ", None, 42])
def test_bad_model_names(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        model_info(bad)


# --------------------------------------------------------------------------- register_model


def test_register_like_copies_figures_and_price(registered: list[str]) -> None:
    name = _unique("azure/my-deployment")
    info = _register(registered, name, like="gpt-4o")
    base = model_info("gpt-4o")
    assert model_info(name) is info
    assert (info.encoding, info.context_window, info.max_output_tokens, info.provider) == (
        base.encoding,
        base.context_window,
        base.max_output_tokens,
        base.provider,
    )
    assert estimate_cost(name, 1234, 567, cached_input_tokens=200) == estimate_cost(
        "gpt-4o", 1234, 567, cached_input_tokens=200
    )


def test_register_overrides(registered: list[str]) -> None:
    name = _unique("acme-gpt")
    info = _register(
        registered,
        name,
        like="gpt-4o",
        context_window=64_000,
        max_output_tokens=4_000,
        encoding="cl100k_base",
        input_usd_per_mtok=Decimal("3"),
        output_usd_per_mtok="12",
        cached_input_usd_per_mtok=1,
    )
    assert (info.context_window, info.max_output_tokens) == (64_000, 4_000)
    assert info.encoding == "cl100k_base" and not info.encoding_assumed
    assert prices_per_million(name) == (Decimal("3"), Decimal("12"))
    cost = estimate_cost(name, 1_000, 500, cached_input_tokens=400)
    assert cost == (600 * Decimal(3) + 400 * Decimal(1) + 500 * Decimal(12)) / 1_000_000
    assert isinstance(cost, Decimal)


def test_register_overrides_a_known_model_and_unregister_restores(
    registered: list[str],
) -> None:
    before = model_info("gpt-4.1-mini")
    _register(registered, "gpt-4.1-mini", context_window=50_000)
    assert model_info("gpt-4.1-mini").context_window == 50_000
    assert model_info("gpt-4.1-mini").encoding == before.encoding
    unregister_model("gpt-4.1-mini")
    assert model_info("gpt-4.1-mini") == before
    unregister_model("gpt-4.1-mini")  # twice is fine


def test_register_a_new_model_from_scratch(registered: list[str]) -> None:
    name = _unique("brand-new")
    info = _register(
        registered,
        name,
        provider="openai",
        context_window=32_000,
        max_output_tokens=2_000,
        input_usd_per_mtok="1",
        output_usd_per_mtok="2",
    )
    assert info.known and info.family is None
    assert info.encoding == "o200k_base" and info.encoding_assumed
    assert estimate_cost(name, 1_000_000, 1_000_000) == Decimal(3)
    # Without prices, there is no price (the price data does not know it).
    unpriced = _unique("brand-new")
    _register(registered, unpriced, provider="openai", context_window=8_000, max_output_tokens=1)
    with pytest.raises(PriceUnavailable):
        estimate_cost(unpriced, 1, 1)


def test_register_a_new_anthropic_model_counts_as_an_estimate(registered: list[str]) -> None:
    name = _unique("claude-next")
    info = _register(
        registered, name, provider="anthropic", context_window=500_000, max_output_tokens=64_000
    )
    assert info.encoding == "claude" and not info.exact_tokenizer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"context_window": 0},
        {"context_window": -5},
        {"context_window": True},
        {"context_window": "128000"},
        {"context_window": 1.5e5},
        {"max_output_tokens": 0},
        {"encoding": "no_such_encoding"},
        {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10},
        {"input_usd_per_mtok": "2.5", "output_usd_per_mtok": 10.0},
        {"input_usd_per_mtok": "2.5", "output_usd_per_mtok": True},
        {"input_usd_per_mtok": "abc", "output_usd_per_mtok": "1"},
        {"input_usd_per_mtok": "NaN", "output_usd_per_mtok": "1"},
        {"input_usd_per_mtok": "Infinity", "output_usd_per_mtok": "1"},
        {"input_usd_per_mtok": "-1", "output_usd_per_mtok": "1"},
        # A half-given price would silently fall back to the price data's.
        {"input_usd_per_mtok": "3"},
        {"output_usd_per_mtok": "3"},
        {"cached_input_usd_per_mtok": "1"},
    ],
)
def test_register_rejects_bad_values(registered: list[str], kwargs: dict[str, Any]) -> None:
    name = _unique("bad")
    with pytest.raises(ConfigurationError):
        _register(registered, name, like="gpt-4o", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not model_info(name).known, "a rejected registration must not be kept"


def test_register_float_price_message_says_why(registered: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="float"):
        _register(registered, _unique(), like="gpt-4o", input_usd_per_mtok=0.1)


def test_register_unknown_model_needs_like_or_figures(registered: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="like="):
        _register(registered, _unique("mystery"))
    with pytest.raises(ConfigurationError, match="context_window"):
        _register(registered, _unique("mystery"), provider="openai", max_output_tokens=10)
    with pytest.raises(ConfigurationError):
        _register(registered, "", like="gpt-4o")


def test_register_like_an_unknown_model_fails(registered: list[str]) -> None:
    with pytest.raises(UnknownModelError):
        _register(registered, _unique("x"), like=_unique("nothing"))
