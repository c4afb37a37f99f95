"""Edge cases found in review: paths where money could leak or the drop-in could break."""

from __future__ import annotations

import asyncio
import copy
import gc
from typing import Any

import openai
import pytest

import guardrail
from guardrail import Guard, Policy

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]


def make(server: Any, policy: Policy | None = None, *, async_: bool = False, **kw: Any):
    records: list[guardrail.UsageRecord] = []
    kw.setdefault("sinks", [records.append])
    guard = Guard(policy or Policy(loop_limit=None), **kw)
    raw_cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    client = guard.wrap(raw_cls(base_url=server.base_url, api_key="t"))
    return guard, client, records


def held(guard: Guard, tenant: str = "default") -> Any:
    return guard.usage(tenant).reserved_usd


def test_client_level_raw_and_streaming_views_are_guarded(server) -> None:
    guard, client, records = make(server)
    raw = client.with_raw_response.chat.completions.create(model=MODEL, messages=HELLO)
    assert raw.parse().choices
    with client.with_streaming_response.chat.completions.create(
        model=MODEL, messages=HELLO
    ) as response:
        assert response.parse().choices
    assert guard.usage("default").requests == 2 and len(records) == 2
    assert client.with_raw_response.models.list().parse().data  # others: the SDK's own


async def test_async_streaming_response_settles_provider_usage(server) -> None:
    guard, client, records = make(server, async_=True)
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HELLO
    ) as response:
        completion = await response.parse()
    assert records[-1].usage_source == "provider"
    assert records[-1].output_tokens == completion.usage.completion_tokens > 0
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HELLO, stream=True
    ) as response:
        stream = await response.parse()
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == server.reply and records[-1].outcome == "stream_completed"
    assert held(guard) == 0


def test_a_timeout_after_sending_is_settled_as_billed_never_zero(server, sleeps) -> None:
    server.enqueue_delay(2)
    server.enqueue_delay(2)
    guard = Guard(Policy(max_attempts=2, loop_limit=None), sleep=sleeps.append)
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", timeout=0.2))
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    usage = guard.usage("default")
    prompt = guardrail.count_messages(HELLO, MODEL)
    assert usage.requests == 2 and usage.input_tokens == 2 * prompt
    assert usage.spent_usd > 0 and usage.reserved_usd == 0


def test_parse_cut_at_its_length_is_settled_from_the_completion(server) -> None:
    server.reply = "word " * 50
    guard, client, records = make(server)
    with pytest.raises(openai.LengthFinishReasonError) as info:
        client.chat.completions.parse(model=MODEL, messages=HELLO, max_tokens=3)
    assert info.value.completion.usage.completion_tokens == 3
    assert records[-1].output_tokens == 3 and records[-1].cost_usd > 0
    assert guard.usage("default").output_tokens == 3 and held(guard) == 0


def test_nonsense_usage_from_the_provider_never_loses_the_call(server) -> None:
    server.cached_tokens = 500  # more cached than prompt tokens
    guard, client, records = make(server)
    out = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert out.choices
    assert guard.usage("default").spent_usd > 0 and held(guard) == 0
    assert records[-1].cached_input_tokens <= records[-1].input_tokens


def test_a_stream_dropped_half_read_is_settled_when_collected(server) -> None:
    guard, client, records = make(server)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    next(stream)
    assert held(guard) > 0
    del stream
    gc.collect()
    assert held(guard) == 0
    assert records[-1].outcome == "stream_closed" and records[-1].cost_usd > 0


async def test_an_async_stream_dropped_half_read_is_settled_when_collected(server) -> None:
    guard, client, records = make(server, async_=True)
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    await stream.__anext__()
    del stream
    gc.collect()
    await asyncio.sleep(0)  # the loop's finaliser hook may close the generator first
    assert held(guard) == 0 and records[-1].cost_usd > 0


class SlowSettleStore(guardrail.MemoryStore):
    """Settles like a store one network round trip away."""

    def __init__(self) -> None:
        super().__init__()
        self.settling = asyncio.Event()

    async def asettle(self, reservation: Any, settlement: Any) -> None:
        self.settling.set()
        await asyncio.sleep(0.05)
        self.settle(reservation, settlement)


async def test_cancelling_during_the_settlement_still_settles(server) -> None:
    store = SlowSettleStore()
    guard, client, records = make(server, async_=True, store=store)
    task = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HELLO))
    await store.settling.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the shielded write finishes on its own
    assert held(guard) == 0 and guard.usage("default").requests == 1
    assert records and records[-1].outcome == "ok"


def test_the_policy_output_cap_is_sent_when_the_caller_sets_none(server) -> None:
    guard, client, records = make(server, Policy(max_output_tokens=5, loop_limit=None))
    server.reply = "word " * 50
    client.chat.completions.create(model=MODEL, messages=HELLO)
    assert server.chat_requests[-1].json["max_completion_tokens"] == 5
    assert records[-1].output_tokens <= 5
    client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=100, max_completion_tokens=100
    )
    sent = server.chat_requests[-1].json
    assert sent["max_tokens"] == 5 and sent["max_completion_tokens"] == 5


def test_generators_for_messages_and_tools_are_counted_and_sent(server) -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
    }
    guard, client, records = make(server)
    client.chat.completions.create(
        model=MODEL, messages=(m for m in HELLO), tools=(t for t in [tool])
    )
    sent = server.chat_requests[-1].json
    assert sent["messages"] == HELLO and sent["tools"] == [tool]
    assert records[-1].input_tokens == guardrail.count_messages(HELLO, MODEL, tools=[tool])


@pytest.mark.parametrize("hint", ["dXNlcjE2MjM=/x", "user 42", "u" * 200])
def test_any_user_string_the_api_accepts_works_as_a_tenant_hint(server, hint: str) -> None:
    derive = guardrail.TenantFromRequest(key=b"0123456789abcdef")
    guard, client, records = make(server, tenant_from_request=derive)
    client.chat.completions.create(model=MODEL, messages=HELLO, user=hint)
    tenant = records[-1].tenant
    assert tenant == guard.request_tenant(hint) and tenant.startswith("_r-")
    assert guard.usage(tenant).requests == 1
    client.chat.completions.create(model=MODEL, messages=HELLO, user=hint)
    assert records[-1].tenant == tenant  # stable


def test_copying_a_guarded_client_keeps_it_guarded(server) -> None:
    guard, client, records = make(server)
    clone = copy.copy(client)
    clone.chat.completions.create(model=MODEL, messages=HELLO)
    assert guard.usage("default").requests == 1
