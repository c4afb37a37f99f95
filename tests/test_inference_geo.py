"""Premiums on Claude's token prices (guardrail.catalog.premiums): US-only inference
(``inference_geo="us"``, or a workspace whose default geo is ``"us"``: 1.1x) and Vertex AI's
regional endpoints (10% above the global one, from Claude Sonnet 4.5 on). A call is
reserved at the premium the request (or ``Policy.assume_inference_geo``, or the client's
region) says, and settled at the geo its response's ``usage.inference_geo`` reports. The
real ``anthropic`` SDK over a loopback socket against guardrail.testing.FakeAnthropicServer
(Vertex through tests/_platforms.py); expected figures come from the price data itself."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import genai_prices
import pytest

import guardrail
from guardrail import ConfigurationError, Guard, Policy
from guardrail.catalog.models import model_info
from guardrail.catalog.premiums import vertex_regional_applies
from guardrail.catalog.pricing import TokenUsage, usage_cost
from guardrail.providers.anthropic.usage import final_usage, read_usage
from guardrail.testing import FakeAnthropicServer
from tests._platforms import make_client
from tests._sdk_http import cut_stream_errors

MODEL = "claude-opus-4-7"  # inference_geo is offered from Opus 4.6 on
HI = [{"role": "user", "content": "Hello there"}]
PROMPT, OUTPUT = 10_000, 1_000  # the fake's counts: the exact count is the reservation's
PREMIUM = Decimal("1.1")


def price(model: str, input_tokens: int = PROMPT, output_tokens: int = OUTPUT) -> Decimal:
    """The price data's standard cost of the tokens."""
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return genai_prices.calc_price(usage, model, provider_id="anthropic").total_price


def fake(**options: Any) -> FakeAnthropicServer:
    return FakeAnthropicServer(prompt_tokens=PROMPT, output_tokens=OUTPUT, **options)


@pytest.fixture
def server() -> Iterator[FakeAnthropicServer]:
    with fake() as running:
        yield running


@pytest.fixture
def us_workspace() -> Iterator[FakeAnthropicServer]:
    """A workspace whose default geo is US: a request naming none runs (and bills) there."""
    with fake(inference_geo="us") as running:
        yield running


def guarded(
    server: FakeAnthropicServer, *, async_: bool = False, **policy: Any
) -> tuple[list[guardrail.UsageRecord], Any]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(
        Policy(daily_spend_usd=5, loop_limit=None, max_attempts=1, **policy),
        sinks=[records.append],
    )
    cls = anthropic.AsyncAnthropic if async_ else anthropic.Anthropic
    raw = cls(base_url=server.base_url, api_key="t", max_retries=0, timeout=30)
    return records, guard.wrap(raw).for_tenant("t")


def _request(geo: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's kwargs; ``geo`` in ``extra_body``, which works with every SDK release
    (anthropic 1.0.0 has no ``inference_geo`` parameter; the guard lifts it to the
    parameter where the SDK has one, so the body sent is the same)."""
    request = {"model": MODEL, "max_tokens": OUTPUT, "messages": HI, **kwargs}
    if geo is not None:
        request["extra_body"] = {"inference_geo": geo}
    return request


def call(client: Any, how: str, geo: str | None = None, **kwargs: Any) -> Any:
    """One Messages call, as ``how`` says: JSON, ``stream=True``, or ``messages.stream``."""
    kwargs = _request(geo, kwargs)
    if how == "json":
        return client.messages.create(**kwargs).usage
    if how == "stream":
        for _ in client.messages.create(stream=True, **kwargs):
            pass
        return None
    with client.messages.stream(**kwargs) as stream:
        return stream.get_final_message().usage


def arun(client: Any, how: str, **kwargs: Any) -> Any:
    """:func:`call` on an async client, in a loop of its own (the client closed after)."""

    async def run() -> Any:
        try:
            return await acall(client, how, **kwargs)
        finally:
            await client.close()

    return asyncio.run(run())


async def acall(client: Any, how: str, geo: str | None = None, **kwargs: Any) -> Any:
    kwargs = _request(geo, kwargs)
    if how == "json":
        return (await client.messages.create(**kwargs)).usage
    if how == "stream":
        async for _ in await client.messages.create(stream=True, **kwargs):
            pass
        return None
    async with client.messages.stream(**kwargs) as stream:
        return (await stream.get_final_message()).usage


HOWS = ["json", "stream", "helper"]


# ----------------------------------------------------------------- US-only inference


@pytest.mark.parametrize("how", HOWS)
def test_a_us_request_is_reserved_and_settled_at_the_premium(
    server: FakeAnthropicServer, how: str
) -> None:
    records, client = guarded(server)
    usage = call(client, how, geo="us")
    assert server.message_requests[-1].json["inference_geo"] == "us"
    if usage is not None:
        assert usage.inference_geo == "us"
    record = records[-1]
    assert record.reserved_usd == record.cost_usd == price(MODEL) * PREMIUM
    assert record.overrun_usd == 0
    assert record.extra["premium"] == "inference_geo=us"


@pytest.mark.skipif(
    "inference_geo" not in inspect.signature(anthropic.resources.Messages.create).parameters,
    reason="this SDK release has no inference_geo parameter",
)
def test_the_inference_geo_parameter_is_priced(server: FakeAnthropicServer) -> None:
    records, client = guarded(server)
    client.messages.create(model=MODEL, max_tokens=OUTPUT, messages=HI, inference_geo="us")
    assert server.message_requests[-1].json["inference_geo"] == "us"
    assert records[-1].reserved_usd == records[-1].cost_usd == price(MODEL) * PREMIUM


@pytest.mark.parametrize("how", HOWS)
def test_a_us_request_is_reserved_at_the_premium_async(
    server: FakeAnthropicServer, how: str
) -> None:
    records, client = guarded(server, async_=True)
    arun(client, how, geo="us")
    assert server.message_requests[-1].json["inference_geo"] == "us"
    assert records[-1].reserved_usd == records[-1].cost_usd == price(MODEL) * PREMIUM


def test_a_us_request_that_does_not_fit_the_cap_at_the_premium_is_refused(
    server: FakeAnthropicServer,
) -> None:
    standard = price(MODEL)
    guard = Guard(Policy(daily_spend_usd=standard * Decimal("1.05"), loop_limit=None))
    raw = anthropic.Anthropic(base_url=server.base_url, api_key="t", max_retries=0)
    client = guard.wrap(raw).for_tenant("t")
    with pytest.raises(guardrail.BudgetExceeded):
        call(client, "json", geo="us")
    assert server.message_requests == []
    call(client, "json")  # at the global rates it fits
    assert len(server.message_requests) == 1


@pytest.mark.parametrize("how", HOWS)
def test_a_us_default_workspace_is_settled_at_the_premium_and_the_overrun_logged(
    us_workspace: FakeAnthropicServer, how: str, caplog: Any
) -> None:
    """The reviewer's finding: the request names no geo, the workspace runs it in the US,
    the response says so; it is charged 1.1x (before: at the global rates, 10% under)."""
    records, client = guarded(us_workspace)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        usage = call(client, how)
    assert "inference_geo" not in us_workspace.message_requests[-1].json
    if usage is not None:
        assert usage.inference_geo == "us"
    record = records[-1]
    assert record.reserved_usd == price(MODEL)
    assert record.cost_usd == price(MODEL) * PREMIUM
    assert record.overrun_usd == record.cost_usd - record.reserved_usd > 0
    assert record.extra["premium"] == "inference_geo=us"
    assert "reports inference_geo 'us' (1.1x)" in caplog.text
    assert "reserved at the standard rates" in caplog.text


def test_a_us_default_workspace_is_settled_at_the_premium_async(
    us_workspace: FakeAnthropicServer,
) -> None:
    records, client = guarded(us_workspace, async_=True)
    arun(client, "json")
    assert records[-1].cost_usd == price(MODEL) * PREMIUM


@pytest.mark.parametrize("how", HOWS)
def test_assume_inference_geo_us_reserves_the_premium(
    us_workspace: FakeAnthropicServer, how: str, caplog: Any
) -> None:
    records, client = guarded(us_workspace, assume_inference_geo="us")
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        call(client, how)
    record = records[-1]
    assert record.reserved_usd == record.cost_usd == price(MODEL) * PREMIUM
    assert record.overrun_usd == 0 and "billed past" not in caplog.text


def test_a_request_naming_global_is_standard_whatever_the_policy_assumes(
    us_workspace: FakeAnthropicServer,
) -> None:
    records, client = guarded(us_workspace, assume_inference_geo="us")
    usage = call(client, "json", geo="global")
    assert usage.inference_geo == "global"
    record = records[-1]
    assert record.reserved_usd == record.cost_usd == price(MODEL)
    assert "premium" not in record.extra


@pytest.mark.parametrize("assumed", [None, "global"])
def test_global_inference_is_unchanged(server: FakeAnthropicServer, assumed: Any) -> None:
    records, client = guarded(server, assume_inference_geo=assumed)
    call(client, "json")
    call(client, "stream", geo="global")
    for record in records:
        assert record.reserved_usd == record.cost_usd == price(MODEL)
        assert "premium" not in record.extra


def test_a_stream_cut_after_message_start_is_settled_at_its_geo(
    us_workspace: FakeAnthropicServer,
) -> None:
    records, client = guarded(us_workspace)
    us_workspace.enqueue_stream_cut(after_events=3)
    with pytest.raises(cut_stream_errors(anthropic)):
        call(client, "stream")
    record = records[-1]
    assert record.usage_source == "local_count"
    assert record.extra["premium"] == "inference_geo=us"
    assert record.cost_usd == price(MODEL, PROMPT, record.output_tokens) * PREMIUM


def test_an_unknown_geo_is_refused_under_a_money_limit(server: FakeAnthropicServer) -> None:
    _, client = guarded(server)
    with pytest.raises(guardrail.UnpricedOption, match="inference_geo='eu'"):
        call(client, "json", geo="eu")
    assert server.message_requests == []


def test_an_unknown_geo_reported_is_charged_at_least_the_premium_and_logged(caplog: Any) -> None:
    with fake(usage_patch={"inference_geo": "mars"}) as server:
        records, client = guarded(server)
        with caplog.at_level(logging.WARNING, logger="guardrail"):
            call(client, "json")
    assert records[-1].cost_usd == price(MODEL) * PREMIUM
    assert records[-1].extra["premium"] == "inference_geo=mars"
    assert "inference_geo 'mars'" in caplog.text and "may be below the bill" in caplog.text


def test_the_policy_knob_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="assume_inference_geo"):
        Policy(assume_inference_geo="eu")  # type: ignore[arg-type]


def test_bedrock_has_no_workspace_geo(server: FakeAnthropicServer) -> None:
    """Bedrock's endpoint says where inference runs: the policy's geo is not assumed."""
    raw, _ = make_client("bedrock-sigv4", server)
    records: list[guardrail.UsageRecord] = []
    guard = Guard(
        Policy(daily_spend_usd=5, loop_limit=None, assume_inference_geo="us"),
        sinks=[records.append],
    )
    model = "anthropic.claude-haiku-4-5-20251001-v1:0"
    guard.wrap(raw).for_tenant("t").messages.create(model=model, max_tokens=OUTPUT, messages=HI)
    assert "premium" not in records[-1].extra
    assert records[-1].cost_usd == usage_cost(model, TokenUsage(PROMPT, OUTPUT))


# ---------------------------------------------------------------- reading the usage


def test_usage_inference_geo_is_read_from_json_and_stream_usage() -> None:
    assert read_usage({"input_tokens": 1, "output_tokens": 1}).service_tier is None
    assert read_usage({"input_tokens": 1, "output_tokens": 1, "inference_geo": "global"}) == (
        TokenUsage(1, 1)
    )
    start = read_usage({"input_tokens": 5, "output_tokens": 1, "inference_geo": "us"})
    assert start is not None and start.service_tier == "inference_geo=us"
    assert final_usage(start, {"output_tokens": 9}).service_tier == "inference_geo=us"
    moved = final_usage(start, {"output_tokens": 9, "inference_geo": "global"})
    assert moved.service_tier is None
    late = final_usage(TokenUsage(5, 1), {"output_tokens": 9, "inference_geo": "us"})
    assert late.service_tier == "inference_geo=us" and late.input_tokens == 5


def test_the_premium_is_exact_on_both_pricing_paths() -> None:
    """Whole pico-dollar rates times 1.1 stay integers; a rate that does not (a registered
    price of 3e-6 USD per MTok) goes the Decimal way, exact too; fees get no premium."""
    us = TokenUsage(PROMPT, OUTPUT, service_tier="inference_geo=us")
    assert usage_cost(MODEL, us) == price(MODEL) * PREMIUM
    odd = guardrail.register_model(
        "geo-test-odd-price",
        like=MODEL,
        input_usd_per_mtok="0.000003",
        output_usd_per_mtok="0.000007",
    )
    standard = usage_cost(odd, TokenUsage(PROMPT, OUTPUT))
    assert usage_cost(odd, TokenUsage(PROMPT, OUTPUT, service_tier="inference_geo=us")) == (
        standard * PREMIUM
    )
    searched = TokenUsage(PROMPT, OUTPUT, web_searches=2)
    fees = usage_cost(MODEL, searched) - price(MODEL)
    assert fees > 0
    premium = TokenUsage(PROMPT, OUTPUT, web_searches=2, service_tier="inference_geo=us")
    assert usage_cost(MODEL, premium) == price(MODEL) * PREMIUM + fees


# ------------------------------------------------------------------- Vertex regional

VERTEX = {  # model id: whether Vertex's regional endpoints bill it 10% more
    "claude-sonnet-4-5@20250929": True,
    "claude-haiku-4-5@20251001": True,
    "claude-opus-4-5@20251101": True,
    "claude-opus-4-6": True,
    "claude-opus-4-1@20250805": False,
    "claude-sonnet-4@20250514": False,
    "claude-3-7-sonnet@20250219": False,
    "claude-3-5-haiku@20241022": False,
}


def test_the_vertex_rule_is_from_claude_4_5_on() -> None:
    for model, premium in VERTEX.items():
        assert vertex_regional_applies(model_info(model)) is premium, model
    assert vertex_regional_applies(model_info("claude-sonnet-5@20270101"))  # a later one


def vertex(
    server: FakeAnthropicServer, region: str, *, async_: bool = False
) -> tuple[list[guardrail.UsageRecord], Any]:
    raw, _ = make_client("vertex", server, region=region, async_=async_)
    records: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(daily_spend_usd=5, loop_limit=None), sinks=[records.append])
    return records, guard.wrap(raw).for_tenant("t")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("region", ["global", "us-east5", "eu"])
@pytest.mark.parametrize("model", ["claude-sonnet-4-5@20250929", "claude-opus-4-1@20250805"])
def test_a_vertex_client_is_priced_by_its_region(
    server: FakeAnthropicServer, model: str, region: str, how: str
) -> None:
    records, client = vertex(server, region)
    call(client, how, model=model)
    premium = region != "global" and VERTEX[model]
    expected = price(model) * (PREMIUM if premium else 1)
    record = records[-1]
    assert record.reserved_usd == record.cost_usd == expected
    assert record.overrun_usd == 0
    assert record.extra.get("premium") == (None if region == "global" else "vertex=regional")


@pytest.mark.parametrize("how", HOWS)
def test_a_regional_vertex_client_is_priced_at_the_premium_async(
    server: FakeAnthropicServer, how: str
) -> None:
    records, client = vertex(server, "us-east5", async_=True)
    model = "claude-sonnet-4-5@20250929"
    arun(client, how, model=model)
    assert records[-1].reserved_usd == records[-1].cost_usd == price(model) * PREMIUM


def test_the_region_is_the_calling_clients(server: FakeAnthropicServer) -> None:
    """A copy made for another region is priced by its own (and the wrap warns no more)."""
    import warnings

    model = "claude-haiku-4-5@20251001"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, client = vertex(server, "global")
        regional = client.with_options(region="europe-west1")
    call(client, "json", model=model)
    call(regional, "json", model=model)
    call(client, "json", model=model)
    assert [r.cost_usd for r in records] == [price(model), price(model) * PREMIUM, price(model)]


def test_a_cheaper_fallback_is_reserved_at_the_premium_the_body_asks_for() -> None:
    """The budget refuses the call's model; its cheaper fallback is planned from the request
    as sent (``extra_body`` merged in, as the first plan reads it), so a premium asked for
    there is reserved on the fallback too."""
    from guardrail.engine.core import Engine
    from guardrail.providers.anthropic.adapter import AnthropicAdapter

    engine = Guard(Policy(fallback_models=("claude-haiku-4-5",), loop_limit=None)).engine
    adapter = AnthropicAdapter()
    kwargs = {
        "model": "claude-opus-4-6",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello"}],
        "extra_body": {"inference_geo": "us"},
    }
    plan = Engine.prepare(engine, adapter, kwargs)
    assert plan.service_tier == "inference_geo=us"  # the first plan reads the body as sent
    (cheaper,) = engine.planner.cheaper_plans(adapter, kwargs, plan)
    assert cheaper.model.name == "claude-haiku-4-5"
    assert cheaper.service_tier == "inference_geo=us"
