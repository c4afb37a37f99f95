"""OpenAI processing tiers (``service_tier``): a call is reserved at the tier the request asks
for (or ``Policy.assume_service_tier`` says, when it names none) and settled at the tier the
response reports, at the price data's prices for that tier (its price variants). A premium
tier the data does not price for the model is refused under a money limit; reported by a
response, it is charged at the standard rates times the tier's bound and logged. The real
``openai`` SDK over a loopback socket against guardrail.testing.FakeOpenAIServer; expected
figures come from the price data itself (genai_prices.calc_price with the tier as its price
context)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import genai_prices
import openai
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.catalog.pricing import tier_unpriced, unpriced_tier_bound
from guardrail.counting import count_messages
from guardrail.engine import unpriced
from guardrail.providers.openai.responses import count_request_input
from guardrail.stores.base import nanos_to_usd, usd_to_nanos
from guardrail.testing import FakeOpenAIServer
from tests._sdk_http import cut_stream_errors

MODEL = "gpt-5"  # has Priority and Flex prices in the price data
NO_PRIORITY = "gpt-5-nano"  # has Flex prices, and no Priority ones
HELLO = [{"role": "user", "content": "Say hello"}]
LONG = "word " * 200  # longer than any output bound below: the output is what was reserved
CAPPED = Policy(daily_spend_usd=5, loop_limit=None, max_attempts=1)


def price(model: str, tier: str | None, input_tokens: int, output_tokens: int) -> Decimal:
    """The price data's cost of the tokens at ``tier`` (None: the standard prices)."""
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    context = None if tier is None else {"service_tier": tier}
    calc = genai_prices.calc_price(usage, model, provider_id="openai", price_context=context)
    return calc.total_price


def test_the_price_data_has_the_tiers_these_tests_use() -> None:
    assert price(MODEL, "priority", 1000, 1000) > price(MODEL, None, 1000, 1000)
    assert price(MODEL, "flex", 1000, 1000) < price(MODEL, None, 1000, 1000)
    assert price(NO_PRIORITY, "priority", 1000, 1000) == price(NO_PRIORITY, None, 1000, 1000)
    assert not tier_unpriced(MODEL, "priority")
    assert not tier_unpriced(MODEL, "fast")
    assert tier_unpriced(NO_PRIORITY, "priority")
    assert tier_unpriced(MODEL, "ultrafast")
    assert not tier_unpriced(NO_PRIORITY, "flex")
    for standard in (None, "auto", "default", "scale"):
        assert not tier_unpriced(NO_PRIORITY, standard)


@pytest.fixture(scope="module")
def priority_default() -> Iterator[FakeOpenAIServer]:
    """A project whose default tier is Priority: a request naming no tier is billed at it."""
    with FakeOpenAIServer(reply=LONG, service_tier="priority") as fake:
        yield fake


@pytest.fixture
def priority_project(priority_default: FakeOpenAIServer) -> FakeOpenAIServer:
    priority_default.reset()
    return priority_default


def make(
    server: FakeOpenAIServer, policy: Policy = CAPPED, *, async_: bool = False
) -> tuple[Guard, Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(policy, sinks=[records.append])
    raw = (openai.AsyncOpenAI if async_ else openai.OpenAI)(
        base_url=server.base_url, api_key="t", max_retries=0
    )
    return guard, guard.wrap(raw), records


CHAT_OUT, RESPONSES_OUT = 12, 16  # output bounds (the fake's Responses minimum is 16)


def _chat(client: Any, stream: bool, model: str = MODEL, **extra: Any) -> None:
    request = dict(model=model, messages=HELLO, max_completion_tokens=CHAT_OUT, **extra)
    if stream:
        for _ in client.chat.completions.create(**request, stream=True):
            pass
    else:
        client.chat.completions.create(**request)


def _responses(client: Any, stream: bool, model: str = MODEL, **extra: Any) -> None:
    request = dict(model=model, input="Say hello", max_output_tokens=RESPONSES_OUT, **extra)
    if stream:
        for _ in client.responses.create(**request, stream=True):
            pass
    else:
        client.responses.create(**request)


async def _achat(client: Any, stream: bool, model: str = MODEL, **extra: Any) -> None:
    request = dict(model=model, messages=HELLO, max_completion_tokens=CHAT_OUT, **extra)
    if stream:
        async for _ in await client.chat.completions.create(**request, stream=True):
            pass
    else:
        await client.chat.completions.create(**request)


async def _aresponses(client: Any, stream: bool, model: str = MODEL, **extra: Any) -> None:
    request = dict(model=model, input="Say hello", max_output_tokens=RESPONSES_OUT, **extra)
    if stream:
        async for _ in await client.responses.create(**request, stream=True):
            pass
    else:
        await client.responses.create(**request)


def _prompt(endpoint: str, model: str = MODEL) -> int:
    if endpoint == "chat":
        return count_messages(HELLO, model)
    return count_request_input({"model": model, "input": "Say hello"})


def _bound(endpoint: str) -> int:
    return CHAT_OUT if endpoint == "chat" else RESPONSES_OUT


CALLS = {"chat": _chat, "responses": _responses}
ASYNC_CALLS = {"chat": _achat, "responses": _aresponses}
SHAPES = [(e, s) for e in ("chat", "responses") for s in (False, True)]
IDS = [f"{e}-{'stream' if s else 'json'}" for e, s in SHAPES]


def _settled_at(record: guardrail.UsageRecord, tier: str | None, model: str = MODEL) -> None:
    assert record.cost_usd == price(model, tier, record.input_tokens, record.output_tokens)
    assert record.cost_usd > 0 and "cost_unknown" not in record.extra


def _bounded(record: guardrail.UsageRecord, tier: str, model: str) -> None:
    """Charged at the standard price times the tier's bound, above the standard price."""
    standard = price(model, None, record.input_tokens, record.output_tokens)
    factor = unpriced_tier_bound(model, tier)
    assert factor >= Decimal("1.5")  # Priority is 1.67x-2x wherever the data prices it
    assert record.cost_usd == standard * factor > standard
    assert "cost_unknown" not in record.extra


def _charged(guard: Guard, record: guardrail.UsageRecord) -> None:
    usage = guard.usage("default")
    assert usage.reserved_usd == 0
    assert usage.spent_usd == nanos_to_usd(usd_to_nanos(record.cost_usd))


# -- a request that asks for a tier ------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "stream"), SHAPES, ids=IDS)
def test_a_priority_request_is_reserved_and_settled_at_priority_prices(
    server: FakeOpenAIServer, endpoint: str, stream: bool
) -> None:
    guard, client, records = make(server)
    CALLS[endpoint](client, stream, service_tier="priority")
    (record,) = records
    assert record.reserved_usd == price(MODEL, "priority", _prompt(endpoint), _bound(endpoint))
    assert record.outcome in ("ok", "stream_completed")
    _settled_at(record, "priority")
    assert record.extra["service_tier"] == "priority"
    assert record.overrun_usd == 0
    _charged(guard, record)
    sent = server.requests[-1].json
    assert sent["service_tier"] == "priority"


@pytest.mark.parametrize(("endpoint", "stream"), SHAPES, ids=IDS)
async def test_async_priority_requests_too(
    server: FakeOpenAIServer, endpoint: str, stream: bool
) -> None:
    guard, client, records = make(server, async_=True)
    await ASYNC_CALLS[endpoint](client, stream, service_tier="priority")
    (record,) = records
    assert record.reserved_usd == price(MODEL, "priority", _prompt(endpoint), _bound(endpoint))
    _settled_at(record, "priority")
    _charged(guard, record)


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_fast_is_priced_as_the_data_prices_it(server: FakeOpenAIServer, endpoint: str) -> None:
    # The API reports a "fast" request as "priority" (the fake does too).
    _, client, records = make(server)
    CALLS[endpoint](client, False, service_tier="fast")
    (record,) = records
    assert record.reserved_usd == price(MODEL, "fast", _prompt(endpoint), _bound(endpoint))
    assert record.extra["service_tier"] == "priority"
    _settled_at(record, "priority")


@pytest.mark.parametrize(("endpoint", "stream"), SHAPES, ids=IDS)
def test_flex_is_reserved_and_settled_at_flex_prices(
    server: FakeOpenAIServer, endpoint: str, stream: bool
) -> None:
    guard, client, records = make(server)
    CALLS[endpoint](client, stream, service_tier="flex")
    (record,) = records
    assert record.reserved_usd == price(MODEL, "flex", _prompt(endpoint), _bound(endpoint))
    _settled_at(record, "flex")
    assert record.cost_usd < price(MODEL, None, record.input_tokens, record.output_tokens)
    _charged(guard, record)


def test_flex_on_a_model_without_flex_prices_is_reserved_at_the_standard_ones(
    server: FakeOpenAIServer,
) -> None:
    assert price("gpt-4o", "flex", 1000, 1000) == price("gpt-4o", None, 1000, 1000)
    _, client, records = make(server)
    _chat(client, False, model="gpt-4o", service_tier="flex")
    (record,) = records
    assert record.reserved_usd == price("gpt-4o", None, _prompt("chat", "gpt-4o"), CHAT_OUT)
    _settled_at(record, None, "gpt-4o")


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
@pytest.mark.parametrize("tier", ["default", "auto", None])
def test_standard_tiers_are_reserved_and_settled_at_the_standard_prices(
    server: FakeOpenAIServer, endpoint: str, tier: str | None
) -> None:
    _, client, records = make(server)
    CALLS[endpoint](client, False, **({} if tier is None else {"service_tier": tier}))
    (record,) = records
    assert record.reserved_usd == price(MODEL, None, _prompt(endpoint), _bound(endpoint))
    _settled_at(record, None)
    # What the response reported: the default tier of a call that asked for no other is
    # not written on every record.
    assert "service_tier" not in record.extra


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
@pytest.mark.parametrize(("model", "tier"), [(NO_PRIORITY, "priority"), (MODEL, "ultrafast")])
def test_a_tier_the_data_does_not_price_is_refused_under_a_money_limit(
    server: FakeOpenAIServer, endpoint: str, model: str, tier: str
) -> None:
    _, client, _ = make(server)
    with pytest.raises(guardrail.UnpricedOption) as info:
        CALLS[endpoint](client, False, model=model, service_tier=tier)
    assert info.value.option == f"service_tier={tier!r}" and info.value.model == model
    assert f"service_tier={tier!r}" in str(info.value) and "nothing was sent" in str(info.value)
    assert server.requests == []


def test_a_priority_request_downgraded_by_the_provider_settles_at_what_it_reports(
    server: FakeOpenAIServer,
) -> None:
    # Past its Priority ramp limit, OpenAI serves (and bills) a request at the default tier.
    server.service_tier = lambda request: "default"
    _, client, records = make(server)
    _chat(client, False, service_tier="priority")
    (record,) = records
    assert record.reserved_usd == price(MODEL, "priority", _prompt("chat"), CHAT_OUT)
    _settled_at(record, None)
    assert record.extra["service_tier"] == "default"


# -- a project whose default tier is Priority ---------------------------------------------


@pytest.mark.parametrize(("endpoint", "stream"), SHAPES, ids=IDS)
def test_a_priority_default_project_is_settled_at_priority_and_the_overrun_logged(
    priority_project: FakeOpenAIServer, endpoint: str, stream: bool, caplog: Any
) -> None:
    guard, client, records = make(priority_project)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        CALLS[endpoint](client, stream)  # names no tier: billed at the project's
    (record,) = records
    reserved = price(MODEL, None, _prompt(endpoint), _bound(endpoint))
    assert record.reserved_usd == reserved
    assert record.output_tokens == _bound(endpoint)  # the whole reserved output
    _settled_at(record, "priority")
    assert record.overrun_usd == record.cost_usd - reserved > 0
    assert record.extra["service_tier"] == "priority"
    _charged(guard, record)  # charged in full, past the reservation
    assert "billed past its reservation" in caplog.text
    assert "service_tier 'priority'" in caplog.text and "standard rates" in caplog.text


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
async def test_async_priority_default_project_too(
    priority_project: FakeOpenAIServer, endpoint: str
) -> None:
    guard, client, records = make(priority_project, async_=True)
    await ASYNC_CALLS[endpoint](client, True)
    (record,) = records
    _settled_at(record, "priority")
    assert record.overrun_usd > 0
    _charged(guard, record)


@pytest.mark.parametrize(("endpoint", "stream"), SHAPES, ids=IDS)
def test_assume_service_tier_reserves_the_priority_worst_case(
    priority_project: FakeOpenAIServer, endpoint: str, stream: bool, caplog: Any
) -> None:
    policy = Policy(daily_spend_usd=5, loop_limit=None, assume_service_tier="priority")
    guard, client, records = make(priority_project, policy)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        CALLS[endpoint](client, stream)
    (record,) = records
    assert record.reserved_usd == price(MODEL, "priority", _prompt(endpoint), _bound(endpoint))
    _settled_at(record, "priority")
    assert record.overrun_usd == 0 and "billed past" not in caplog.text
    assert "service_tier" not in priority_project.requests[-1].json  # the request is as sent
    _charged(guard, record)


def test_assume_service_tier_applies_to_auto_but_not_to_a_named_tier(
    server: FakeOpenAIServer,
) -> None:
    policy = Policy(daily_spend_usd=5, loop_limit=None, assume_service_tier="priority")
    _, client, records = make(server, policy)
    _chat(client, False, service_tier="auto")
    _chat(client, False, service_tier="default")
    _chat(client, False, service_tier="flex")
    auto, default, flex = records
    assert auto.reserved_usd == price(MODEL, "priority", _prompt("chat"), CHAT_OUT)
    _settled_at(auto, None)  # the server's default tier is "default": settled at it
    assert default.reserved_usd == price(MODEL, None, _prompt("chat"), CHAT_OUT)
    assert flex.reserved_usd == price(MODEL, "flex", _prompt("chat"), CHAT_OUT)


def test_assume_service_tier_never_refuses_a_model_without_priority_prices(
    priority_project: FakeOpenAIServer, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenAI serves gpt-5-nano at the default tier; were it billed at Priority, the price
    # data could not say how much: reserved and charged at Priority's bound, logged, flagged.
    monkeypatch.setattr(unpriced, "_tiers_warned", set())
    policy = Policy(daily_spend_usd=5, loop_limit=None, assume_service_tier="priority")
    guard, client, records = make(priority_project, policy)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        for _ in range(2):
            _chat(client, False, model=NO_PRIORITY)
    first, second = records
    standard = price(NO_PRIORITY, None, _prompt("chat", NO_PRIORITY), CHAT_OUT)
    # Reserved as it is settled: the standard price times Priority's bound.
    assert first.reserved_usd == standard * unpriced_tier_bound(NO_PRIORITY, "priority")
    _bounded(first, "priority", NO_PRIORITY)  # not the standard cost
    assert first.overrun_usd == 0 and first.cost_usd == first.reserved_usd
    assert first.extra["service_tier"] == "priority"
    assert first.extra["service_tier_unpriced"] is True
    assert second.extra["service_tier_unpriced"] is True
    assert caplog.text.count("which the price data has no prices for") == 1  # once
    assert guard.usage("default").spent_usd >= first.cost_usd + second.cost_usd


def test_concurrent_calls_at_an_assumed_tier_without_prices_stay_within_the_cap() -> None:
    """Each reservation holds what its call settles at, so calls that all reserve before any
    settles cannot take the tenant past its cap (at the standard rates they reached 2.5x)."""
    calls = 6
    barrier = threading.Barrier(calls, timeout=20)

    def reply(_request: Any) -> str:
        barrier.wait()  # every call reserved and in flight before any settles
        return LONG  # the whole output bound

    policy = Policy(daily_spend_usd=5, loop_limit=None, assume_service_tier="priority")
    with FakeOpenAIServer(reply=LONG, service_tier="priority") as fake:
        _, probe, records = make(fake, policy)
        _chat(probe, False, model=NO_PRIORITY)
        cap = records[0].reserved_usd * calls  # exactly that many fit
        fake.reply = reply
        capped = Policy(daily_spend_usd=cap, loop_limit=None, assume_service_tier="priority")
        guard, client, _ = make(fake, capped)
        with ThreadPoolExecutor(calls) as pool:
            for future in [pool.submit(_chat, client, False, NO_PRIORITY) for _ in range(calls)]:
                future.result()
    assert 0 < guard.usage("default").spent_usd <= cap


def test_a_reported_tier_the_data_does_not_price_is_charged_at_the_bound_of_any_tier(
    caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unpriced, "_tiers_warned", set())
    with (
        FakeOpenAIServer(reply=LONG, service_tier="ultrafast") as fake,
        caplog.at_level(logging.WARNING, logger="guardrail"),
    ):
        guard, client, records = make(fake)
        _responses(client, True, model="gpt-5.4")
    (record,) = records
    _bounded(record, "ultrafast", "gpt-5.4")
    known = max(unpriced_tier_bound(MODEL, tier) for tier in ("priority", "fast"))
    assert unpriced_tier_bound("gpt-5.4", "ultrafast") == known  # the largest of any tier
    assert record.extra["service_tier_unpriced"] is True
    assert "'ultrafast'" in caplog.text and "gpt-5.4" in caplog.text
    _charged(guard, record)


def test_the_policy_refuses_a_tier_it_does_not_know() -> None:
    with pytest.raises(guardrail.ConfigurationError, match="assume_service_tier"):
        Policy(assume_service_tier="premium")  # type: ignore[arg-type]


# -- the other forms of a call ------------------------------------------------------------


def test_a_cut_chat_stream_is_settled_at_the_tier_its_chunks_said(
    priority_project: FakeOpenAIServer,
) -> None:
    priority_project.enqueue_stream_cut(after_chunks=4)
    guard, client, records = make(priority_project)
    with pytest.raises(cut_stream_errors(openai)):
        _chat(client, True)
    (record,) = records
    assert record.usage_source == "local_count" and record.extra["service_tier"] == "priority"
    _settled_at(record, "priority")
    _charged(guard, record)


def test_a_cut_responses_stream_is_settled_at_the_tier_it_was_reserved_at(
    server: FakeOpenAIServer,
) -> None:
    server.enqueue_stream_cut(after_chunks=3)  # before its terminal event: no tier reported
    guard, client, records = make(server)
    with pytest.raises(cut_stream_errors(openai)):
        _responses(client, True, service_tier="priority")
    (record,) = records
    assert record.usage_source == "local_count" and record.extra["service_tier"] == "priority"
    _settled_at(record, "priority")
    _charged(guard, record)


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_raw_response_is_settled_at_the_tier_it_reports(
    priority_project: FakeOpenAIServer, endpoint: str
) -> None:
    guard, client, records = make(priority_project)
    if endpoint == "chat":
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, max_completion_tokens=CHAT_OUT
        )
    else:
        raw = client.responses.with_raw_response.create(
            model=MODEL, input="Say hello", max_output_tokens=RESPONSES_OUT
        )
    assert raw.parse().service_tier == "priority"
    (record,) = records
    _settled_at(record, "priority")
    _charged(guard, record)


def test_the_fake_reports_the_tier_asked_for_else_its_own(server: FakeOpenAIServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    asked = {None: "default", "auto": "default", "flex": "flex", "fast": "priority"}
    for tier, reported in asked.items():
        extra = {} if tier is None else {"service_tier": tier}
        chat = client.chat.completions.create(model=MODEL, messages=HELLO, **extra)
        assert chat.service_tier == reported
        response = client.responses.create(model=MODEL, input="hi", **extra)
        assert response.service_tier == reported
    server.service_tier = "priority"
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    assert {c.service_tier for c in chunks} == {"priority"}
