"""``AnthropicBedrock`` and ``AnthropicVertex`` (and their async twins) guarded as ``Anthropic``
is: real SDK clients sending their platform's requests over a real loopback socket to
:class:`FakeAnthropicServer` (``tests/_platforms.py`` bridges the routes)."""

from __future__ import annotations

import logging
import warnings
from decimal import Decimal
from typing import Any

import anthropic
import pytest

import guardrail
from guardrail import BudgetExceeded, ConfigurationError, Guard, Policy, UnmeteredCall
from guardrail.testing import FakeAnthropicServer
from tests._platforms import KINDS, Sent, make_client

HI = [{"role": "user", "content": "Hello there"}]
MODEL = {  # (model id, input and output USD per MTok the platform bills for it)
    "bedrock": ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "3.3", "16.5"),  # regional
    "bedrock-sigv4": ("anthropic.claude-haiku-4-5-20251001-v1:0", "1.1", "5.5"),  # in-region
    "vertex": ("claude-sonnet-4-5@20250929", "3", "15"),  # the global endpoint
}
CAP = Decimal("1")


@pytest.fixture
def server() -> Any:
    with FakeAnthropicServer() as fake:
        yield fake


def wrap(
    kind: str, server: FakeAnthropicServer, cap: Decimal | None = CAP, **options: Any
) -> tuple[Guard, Any, Sent]:
    raw, sent = make_client(kind, server, **options)
    guard = Guard(Policy(daily_spend_usd=cap, loop_limit=None))
    return guard, guard.wrap(raw).for_tenant("t"), sent


def price(kind: str, usage: Any) -> Decimal:
    _, per_in, per_out = MODEL[kind]
    cost = usage.input_tokens * Decimal(per_in) + usage.output_tokens * Decimal(per_out)
    return cost / 1_000_000


def spent(guard: Guard) -> Decimal:
    return Decimal(str(guard.usage("t").spent_usd))


def calls(sent: Sent) -> list[str]:
    """The paid requests the SDK sent (not Vertex's count requests)."""
    return [p for p in sent.paths if "count-tokens" not in p]


# --------------------------------------------------------------- the guarded classes


@pytest.mark.parametrize("async_", [False, True])
@pytest.mark.parametrize("kind", ["bedrock", "vertex"])
def test_wrap_returns_the_platform_class_with_guarded_resources(
    kind: str, async_: bool, server: FakeAnthropicServer
) -> None:
    raw, _ = make_client(kind, server, async_=async_)
    guarded = Guard(Policy(loop_limit=None)).wrap(raw)
    assert isinstance(guarded, type(raw)) and type(guarded) is not type(raw)
    for path in ("messages", "messages.batches", "beta", "beta.messages"):
        resource = guardrail.providers.sdk_classes.resource_at(guarded, path)
        assert type(resource).__name__.startswith("Guarded"), path
    for view in (guarded.with_options(timeout=5), guarded.copy(), guarded.for_tenant("u")):
        assert type(view) is type(guarded)
        assert type(view.messages) is type(guarded.messages)
    # The client given, and the plain copy guarded calls are sent on, keep the SDK's own.
    assert type(raw.messages) is type(guarded.unwrapped.messages) is not type(guarded.messages)
    plain = guarded._guardrail.unretried(guarded)
    assert type(plain) is type(raw) and type(plain.messages) is type(raw.messages)


def test_a_resource_a_client_does_not_have_stays_absent() -> None:
    """AnthropicFoundry's messages.batches is None (no Batch API there), not an error."""
    guarded = Guard(Policy(loop_limit=None)).wrap(
        anthropic.AnthropicFoundry(api_key="k", resource="r")
    )
    assert guarded.messages.batches is None
    assert type(guarded.messages).__name__ == "GuardedMessagesFoundry"


def test_a_client_whose_resources_cannot_be_replaced_is_refused() -> None:
    class Odd(anthropic.Anthropic):  # messages behind a plain property: built on every read
        messages = property(lambda self: anthropic.resources.messages.Messages(self))  # type: ignore[assignment]

    Odd.__module__ = "anthropic.lib.odd"
    odd = Odd(api_key="test", base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match=r"cannot guard a Odd: its messages \(Messages\)"):
        Guard(Policy(loop_limit=None)).wrap(odd)


# ---------------------------------------------------------------- metered and priced


@pytest.mark.parametrize("kind", KINDS)
def test_create_is_metered_and_priced_at_the_platform_price(
    kind: str, server: FakeAnthropicServer
) -> None:
    model = MODEL[kind][0]
    guard, client, sent = wrap(kind, server)
    message = client.messages.create(model=model, max_tokens=50, messages=HI)
    assert message.usage.input_tokens > 0
    assert spent(guard) == price(kind, message.usage) > 0
    assert guard.usage("t").requests == 1 and guard.usage("t").reserved_usd == 0
    assert [r.json["model"] for r in server.message_requests] == [model]
    assert len(calls(sent)) == 1 and calls(sent)[0].endswith(
        ":rawPredict" if kind == "vertex" else "/invoke"
    )
    if kind == "bedrock-sigv4":
        assert sent.headers[-1]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    # The guard's policy is the only retry layer: the SDK sent it once, with no retries.
    assert server.message_requests[0].json["max_tokens"] == 50


@pytest.mark.parametrize("kind", KINDS)
def test_streams_are_metered(kind: str, server: FakeAnthropicServer) -> None:
    model = MODEL[kind][0]
    guard, client, sent = wrap(kind, server)
    events = list(client.messages.create(model=model, max_tokens=50, messages=HI, stream=True))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    with client.messages.stream(model=model, max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
    assert guard.usage("t").requests == 2
    assert spent(guard) == 2 * price(kind, final.usage)
    suffix = ":streamRawPredict" if kind == "vertex" else "/invoke-with-response-stream"
    assert len(calls(sent)) == 2 and all(p.endswith(suffix) for p in calls(sent))


@pytest.mark.parametrize("kind", KINDS)
def test_raw_and_streaming_response_views_are_metered(
    kind: str, server: FakeAnthropicServer
) -> None:
    model = MODEL[kind][0]
    guard, client, _ = wrap(kind, server)
    raw = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=HI)
    usage = raw.parse().usage
    with client.messages.with_streaming_response.create(
        model=model, max_tokens=50, messages=HI
    ) as response:
        assert response.parse().usage.output_tokens == usage.output_tokens
    assert guard.usage("t").requests == 2 and spent(guard) == 2 * price(kind, usage)


@pytest.mark.parametrize("kind", ["bedrock", "vertex"])
def test_without_a_limit_calls_are_recorded(kind: str, server: FakeAnthropicServer) -> None:
    guard, client, _ = wrap(kind, server, cap=None)
    message = client.messages.create(model=MODEL[kind][0], max_tokens=50, messages=HI)
    assert guard.usage("t").requests == 1 and spent(guard) == price(kind, message.usage)


@pytest.mark.parametrize("kind", KINDS)
def test_a_tiny_cap_refuses_before_anything_is_sent(kind: str, server: FakeAnthropicServer) -> None:
    guard, client, sent = wrap(kind, server, cap=Decimal("0.000001"))
    with pytest.raises(BudgetExceeded):
        client.messages.create(model=MODEL[kind][0], max_tokens=50, messages=HI)
    with (
        pytest.raises(BudgetExceeded),
        client.messages.stream(model=MODEL[kind][0], max_tokens=50, messages=HI),
    ):
        pass
    assert sent.paths == [] and server.requests == []  # not even a count
    assert guard.usage("t").requests == 0 and guard.usage("t").reserved_usd == 0


@pytest.mark.parametrize("kind", ["bedrock", "vertex"])
def test_copies_are_guarded_and_keep_the_callers_http_client(
    kind: str, server: FakeAnthropicServer
) -> None:
    guard, client, sent = wrap(kind, server)
    model = MODEL[kind][0]
    for view in (client.with_options(timeout=20), client.copy(max_retries=1)):
        view.messages.create(model=model, max_tokens=50, messages=HI)
    client.for_tenant("other").messages.create(model=model, max_tokens=50, messages=HI)
    assert guard.usage("t").requests == 2 and guard.usage("other").requests == 1
    assert len(calls(sent)) == 3  # every copy sent through the caller's transport


def test_rotated_credentials_reach_the_guarded_calls(server: FakeAnthropicServer) -> None:
    """Vertex access tokens last an hour: one set on the guarded client is the one sent."""
    guard, client, sent = wrap("vertex", server)
    client.messages.create(model=MODEL["vertex"][0], max_tokens=50, messages=HI)
    client.access_token = "fresh-token"
    client.messages.create(model=MODEL["vertex"][0], max_tokens=50, messages=HI)
    assert [h["authorization"] for h in sent.headers][-1] == "Bearer fresh-token"
    guard, client, sent = wrap("bedrock", server)
    client.api_key = "rotated-key"
    client.messages.create(model=MODEL["bedrock"][0], max_tokens=50, messages=HI)
    assert sent.headers[-1]["authorization"] == "Bearer rotated-key"


# ------------------------------------------------------------------- counting tokens


def test_vertex_counts_exactly_and_count_tokens_is_free(server: FakeAnthropicServer) -> None:
    guard, client, sent = wrap("vertex", server)
    assert client.exact_count is True
    counted = client.messages.count_tokens(model=MODEL["vertex"][0], messages=HI)
    assert counted.input_tokens > 0 and guard.usage("t").requests == 0
    client.messages.create(model=MODEL["vertex"][0], max_tokens=50, messages=HI)
    assert sent.paths[-2].endswith("/models/count-tokens:rawPredict")  # the exact count
    assert sent.paths[-1].endswith(":rawPredict") and len(server.count_requests) == 2


@pytest.mark.parametrize("kind", ["bedrock", "bedrock-sigv4"])
def test_bedrock_counts_locally_from_the_start(
    kind: str, server: FakeAnthropicServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Bedrock's SDK cannot send count_tokens: the guard does not ask, and says nothing."""
    guard, client, sent = wrap(kind, server)
    assert client.exact_count is False
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        client.messages.create(model=MODEL[kind][0], max_tokens=50, messages=HI)
    assert caplog.records == [] and guard.usage("t").requests == 1
    with pytest.raises(anthropic.AnthropicError, match="not supported in Bedrock"):
        client.messages.count_tokens(model=MODEL[kind][0], messages=HI)  # the SDK's own
    assert len(sent.paths) == 1


# ----------------------------------------------------------- the raw-request screen


@pytest.mark.parametrize("kind", ["bedrock", "vertex"])
def test_unknown_and_unmetered_writes_are_refused(kind: str, server: FakeAnthropicServer) -> None:
    guard, client, sent = wrap(kind, server)
    model = MODEL[kind][0]
    platform_path = (
        f"/projects/proj/locations/global/publishers/anthropic/models/{model}:rawPredict"
        if kind == "vertex"
        else f"/model/{model}/invoke"
    )
    body = {"model": model, "max_tokens": 50, "messages": HI}
    for path in ("/v1/messages", platform_path):
        with pytest.raises(UnmeteredCall, match="does not know to be free"):
            client.post(path, body=body, cast_to=object)
    with pytest.raises(UnmeteredCall, match=r"messages\.batches\.create"):
        client.messages.batches.create(requests=[])
    with pytest.raises(UnmeteredCall, match=r"beta\.messages\.create"):
        client.beta.messages.create(**body)
    assert sent.paths == [] and guard.usage("t").requests == 0


# ------------------------------------------------------------------------------ async


@pytest.mark.parametrize("kind", KINDS)
async def test_async_clients_are_metered_and_refused_alike(
    kind: str, server: FakeAnthropicServer
) -> None:
    model = MODEL[kind][0]
    raw, sent = make_client(kind, server, async_=True)
    guard = Guard(Policy(daily_spend_usd=CAP, loop_limit=None))
    client = guard.wrap(raw).for_tenant("t")
    message = await client.messages.create(model=model, max_tokens=50, messages=HI)
    events = [
        e.type
        async for e in await client.messages.create(
            model=model, max_tokens=50, messages=HI, stream=True
        )
    ]
    async with client.messages.stream(model=model, max_tokens=50, messages=HI) as stream:
        final = await stream.get_final_message()
    raw_response = await client.messages.with_raw_response.create(
        model=model, max_tokens=50, messages=HI
    )
    assert (await raw_response.parse()).usage == message.usage
    view = client.with_options(timeout=20)
    await view.messages.create(model=model, max_tokens=50, messages=HI)
    assert events[-1] == "message_stop" and final.usage.output_tokens > 0
    assert guard.usage("t").requests == 5 and spent(guard) == 5 * price(kind, message.usage)
    assert client.exact_count is (kind == "vertex")
    paid = len(calls(sent))
    with pytest.raises(UnmeteredCall):
        await client.post("/v1/messages", body={"model": model}, cast_to=object)
    tiny = Guard(Policy(daily_spend_usd=Decimal("0.000001"), loop_limit=None))
    with pytest.raises(BudgetExceeded):
        await tiny.wrap(raw).messages.create(model=model, max_tokens=50, messages=HI)
    assert len(calls(sent)) == paid == 5


# ---------------------------------------------------------------------------- pricing


def test_vertex_regional_endpoints_are_priced_not_warned_about(
    server: FakeAnthropicServer,
) -> None:
    """Vertex bills its regional endpoints 10% above the global one (from Sonnet 4.5 on):
    a regional client's calls are reserved and settled at that premium
    (tests/test_inference_geo.py), so wrapping one warns no more."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard, client, _ = wrap("vertex", server)
        regional = guard.wrap(make_client("vertex", server, region="us-east5")[0])
    model = MODEL["vertex"][0]
    message = client.messages.create(model=model, max_tokens=50, messages=HI)
    regional.for_tenant("t").messages.create(model=model, max_tokens=50, messages=HI)
    assert spent(guard) == price("vertex", message.usage) * Decimal("2.1")


@pytest.mark.parametrize(
    ("model", "per_in", "per_out"),
    [
        # Bedrock: regional (in-region and geographic profiles) 10% above global, from
        # Sonnet 4.5 and Haiku 4.5 on; the older models at Anthropic's prices.
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "3.3", "16.5"),
        ("eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "3.3", "16.5"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "3", "15"),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "1.1", "5.5"),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "1", "5"),
        ("us.anthropic.claude-opus-4-1-20250805-v1:0", "15", "75"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "0.8", "4"),
        # Vertex ids: the global endpoint's prices (a regional client adds its premium).
        ("claude-haiku-4-5@20251001", "1", "5"),
        ("claude-opus-4-1@20250805", "15", "75"),
    ],
)
def test_platform_model_ids_are_priced(model: str, per_in: str, per_out: str) -> None:
    expected = (1000 * Decimal(per_in) + 100 * Decimal(per_out)) / 1_000_000
    assert guardrail.estimate_cost(model, 1000, 100) == expected
