"""Retries, streams, failures and cancellation: nothing leaks, nothing is recorded as $0."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, Policy
from tests._sdk_http import cut_stream_errors

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]


def make(server: Any, policy: Policy | None = None, *, async_: bool = False, **kw: Any):
    raw_cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    guard = Guard(policy or Policy(loop_limit=None), **kw)
    return guard, guard.wrap(raw_cls(base_url=server.base_url, api_key="test"))


def no_leak(guard: Guard, tenant: str) -> None:
    assert guard.usage(tenant).reserved_usd == 0


# -- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "retried"),
    [
        (408, openai.APIStatusError, True),
        (409, openai.ConflictError, True),
        (429, openai.RateLimitError, True),
        (500, openai.InternalServerError, True),
        (503, openai.InternalServerError, True),
        (400, openai.BadRequestError, False),
        (401, openai.AuthenticationError, False),
        (403, openai.PermissionDeniedError, False),
        (404, openai.NotFoundError, False),
        (422, openai.UnprocessableEntityError, False),
    ],
)
def test_retry_counts_per_status(server, sleeps, status, error, retried) -> None:
    for _ in range(4):
        server.enqueue_error(status)
    guard, client = make(server, Policy(max_attempts=3, loop_limit=None), sleep=sleeps.append)
    with pytest.raises(error):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(server.chat_requests) == (3 if retried else 1)
    assert len(sleeps) == (2 if retried else 0)
    no_leak(guard, "default")
    assert guard.usage("default").spent_usd == 0  # failures without usage cost nothing


def test_context_length_exceeded_is_never_retried(server, sleeps) -> None:
    server.enqueue_error(400, code="context_length_exceeded")
    guard, client = make(server, sleep=sleeps.append)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.code == "context_length_exceeded"
    assert len(server.chat_requests) == 1 and sleeps == []


def test_retry_succeeds_and_honours_retry_after(server, sleeps) -> None:
    server.enqueue_error(429, retry_after=1.5)
    server.enqueue_error(503)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(
        server, Policy(max_attempts=4), sleep=sleeps.append, sinks=[records.append]
    )
    out = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert out.choices[0].message.content
    assert sleeps[0] == 1.5  # retry-after-ms wins over the backoff
    assert len(sleeps) == 2 and 0 <= sleeps[1] <= 20
    assert records[-1].attempts == 3 and records[-1].outcome == "ok"
    assert guard.usage("default").requests == 1


def test_connection_errors_are_retried(server, sleeps) -> None:
    server.enqueue_disconnect()
    guard, client = make(server, sleep=sleeps.append)
    client.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(server.chat_requests) == 2 and len(sleeps) == 1


def test_retry_time_budget_bounds_the_waits(server, sleeps) -> None:
    for _ in range(10):
        server.enqueue_error(429, retry_after=4)
    guard, client = make(server, Policy(max_attempts=10, max_retry_seconds=10), sleep=sleeps.append)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert sum(sleeps) <= 10 and len(sleeps) == 2  # a third 4 s wait would pass 10 s


def test_retry_stops_when_another_attempt_cannot_be_afforded(server, sleeps) -> None:
    cost = guardrail.estimate_cost(MODEL, guardrail.count_messages(HELLO, MODEL), 100)
    guard, client = make(
        server,
        Policy(max_attempts=5, loop_limit=None),
        tenant_policies={"org": Policy(daily_spend_usd=cost)},  # room for one worst case
    )

    def someone_else_spends(seconds: float) -> None:
        sleeps.append(seconds)  # during the backoff, a colleague uses the org's budget
        client.for_tenant("rich", ["org"]).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )

    guard.sleep = someone_else_spends
    server.enqueue_error(500)
    with pytest.raises(openai.InternalServerError) as info:
        client.for_tenant("poor", ["org"]).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )
    notes = getattr(info.value, "__notes__", [])
    assert any("stopped retrying" in n and "'org'" in n for n in notes)
    assert len(sleeps) == 1 and len(server.chat_requests) == 2  # poor once, rich once
    no_leak(guard, "poor")
    no_leak(guard, "org")


# -- streaming -------------------------------------------------------------------------


def test_stream_settles_from_provider_usage_and_hides_the_usage_chunk(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, sinks=[records.append])
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    assert all(c.choices for c in chunks)  # chunk.choices[0] never breaks
    assert server.chat_requests[-1].json["stream_options"] == {"include_usage": True}
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == server.reply
    record = records[-1]
    assert record.outcome == "stream_completed" and record.usage_source == "provider"
    assert record.output_tokens == guardrail.count_text(server.reply, MODEL)
    assert record.cost_usd > 0
    assert guard.usage("default").requests == 1
    no_leak(guard, "default")


def test_stream_keeps_the_usage_chunk_when_the_caller_asked(server) -> None:
    guard, client = make(server)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_stream_closed_early_is_settled_from_the_local_count(server) -> None:
    server.reply = "one two three four five six seven eight nine ten"
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, sinks=[records.append])
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    seen = ""
    for chunk in stream:
        seen += chunk.choices[0].delta.content or ""
        if len(seen) > 8:
            break
    record = records[-1]  # breaking out of the loop settled it
    assert record.outcome == "stream_closed" and record.usage_source == "local_count"
    assert record.output_tokens == guardrail.count_text(seen, MODEL) > 0
    assert record.input_tokens == guardrail.count_messages(HELLO, MODEL)
    assert record.cost_usd > 0  # never $0
    no_leak(guard, "default")


def test_stream_close_before_reading_settles_the_prompt(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, sinks=[records.append])
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
        pass
    assert records[-1].outcome == "stream_closed"
    assert records[-1].input_tokens > 0 and records[-1].cost_usd > 0
    no_leak(guard, "default")


def test_stream_dropped_connection_settles_and_raises(server) -> None:
    server.enqueue_stream_cut(after_chunks=3)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, sinks=[records.append])
    got = []
    with pytest.raises(cut_stream_errors(openai)) as cut:
        for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
            got.append(chunk)
    record = records[-1]
    assert record.outcome == "stream_error" and record.usage_source == "local_count"
    assert record.cost_usd > 0 and type(cut.value).__name__ in record.error
    assert guard.usage("default").requests == 1
    no_leak(guard, "default")


def test_stream_output_overrun_raises(server) -> None:
    server.reply = "word " * 50
    guard, client = make(server, Policy(loop_limit=None, max_output_tokens=5))
    # The fake server honours max_tokens; drop it to play a provider that does not.
    server.prompt_tokens = lambda request: 9
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    stream._plan = stream._plan.__class__(**{**stream._plan.__dict__, "reserved_output": 3})
    stream._tally.reserved_output = 3
    with pytest.raises(BudgetExceeded, match="reserved"):
        list(stream)
    no_leak(guard, "default")


async def test_async_stream_and_early_break(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, async_=True, sinks=[records.append])
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = [c async for c in stream]
    assert records[-1].outcome == "stream_completed" and chunks
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    async for _ in stream:
        break
    await stream.close()
    assert records[-1].outcome == "stream_closed"
    assert guard.usage("default").requests == 2
    no_leak(guard, "default")


# -- cancellation and interrupts ---------------------------------------------------------


async def test_cancellation_releases_the_reservation(server) -> None:
    server.enqueue_delay(30)
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, async_=True, sinks=[records.append])
    task = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HELLO))
    while not server.chat_requests:
        await asyncio.sleep(0.005)
    assert guard.usage("default").reserved_usd > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    no_leak(guard, "default")
    assert records[-1].outcome == "cancelled"
    server.reset()  # ends the scripted delay


def test_keyboard_interrupt_releases_the_reservation(server) -> None:
    guard, client = make(server)
    target = client.unwrapped

    def interrupted(**kwargs: Any) -> Any:
        assert guard.usage("default").reserved_usd > 0
        raise KeyboardInterrupt

    fake = type("C", (), {})()
    fake.chat = type("Ch", (), {})()
    fake.chat.completions = type("Co", (), {"create": staticmethod(interrupted)})()
    client._guardrail.unretried(client)  # made once for the client's settings, then
    client._guardrail._unretried = fake  # replaced: guarded calls are sent on it
    with pytest.raises(KeyboardInterrupt):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    no_leak(guard, "default")
    assert target is client.unwrapped


def test_expired_reservation_returns_budget(clock) -> None:
    from guardrail.stores.base import ReservationRequest, ScopeLimits

    store = guardrail.MemoryStore(clock=clock)
    limits = (ScopeLimits("w", daily_nanos=1000),)
    store.reserve(ReservationRequest("r1", limits, 800, 10, ttl_seconds=60))  # a crashed worker
    with pytest.raises(BudgetExceeded):
        store.reserve(ReservationRequest("r2", limits, 800, 10, ttl_seconds=60))
    clock.advance(61)
    store.reserve(ReservationRequest("r3", limits, 800, 10, ttl_seconds=60))
    assert store.usage("w").reserved_usd == Decimal(800) / 10**9


# -- store faults ------------------------------------------------------------------------


class FlakyStore(guardrail.MemoryStore):
    """A memory store whose reserve fails like a store that lost its connection."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def reserve(self, request):  # type: ignore[no-untyped-def]
        if self.down:
            raise ConnectionError("store unreachable")
        return super().reserve(request)


def test_store_failure_fails_closed_by_default(server) -> None:
    guard, client = make(server, store=FlakyStore())
    with pytest.raises(guardrail.StoreUnavailable, match="unreachable") as info:
        client.for_tenant("x").chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.tenant == "x"
    assert server.chat_requests == []


def test_store_failure_fails_open_when_configured_and_still_records(server, caplog) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(
        server, store=FlakyStore(), on_store_error="fail_open", sinks=[records.append]
    )
    out = client.for_tenant("x").chat.completions.create(model=MODEL, messages=HELLO)
    assert out.choices and len(server.chat_requests) == 1
    assert any("failing OPEN" in r.getMessage() for r in caplog.records)
    assert guard.usage("x").requests == 1  # the actual usage still reached the store
    assert records[-1].cost_usd == guard.usage("x").spent_usd


def test_n_choices_multiply_the_reserved_output(server) -> None:
    prompt = guardrail.count_messages(HELLO, MODEL)
    one = guardrail.estimate_cost(MODEL, prompt, 100)
    three = guardrail.estimate_cost(MODEL, prompt, 300)
    guard, client = make(server, Policy(daily_spend_usd=(one + three) / 2, loop_limit=None))
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    with pytest.raises(BudgetExceeded) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100, n=3)
    assert info.value.requested == three
