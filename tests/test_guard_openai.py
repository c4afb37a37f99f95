"""The guarded OpenAI client, through the real SDK, against the fake server on loopback."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, ContextWindowExceeded, Guard, Policy
from guardrail.stores.base import usd_to_nanos

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]


def make(server: Any, policy: Policy | None = None, *, async_: bool = False, **guard_kw: Any):
    raw_cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    raw = raw_cls(base_url=server.base_url, api_key="test", max_retries=5)
    guard = Guard(policy or Policy(), **guard_kw)
    return guard, guard.wrap(raw)


def worst_case(messages: list[dict[str, Any]], output: int, model: str = MODEL) -> Decimal:
    return guardrail.estimate_cost(model, guardrail.count_messages(messages, model), output)


# -- the happy path and drop-in fidelity --------------------------------------------


def test_settles_actual_usage_and_cost(server, clock) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, clock=clock, sinks=[records.append])
    out = client.for_tenant("alice").chat.completions.create(model=MODEL, messages=HELLO)
    assert out.choices[0].message.content
    usage = guard.usage("alice")
    expected = guardrail.usage_cost(MODEL, out.usage)
    assert usage.spent_usd == Decimal(usd_to_nanos(expected)) / 10**9
    assert usage.requests == 1
    assert usage.input_tokens == out.usage.prompt_tokens == guardrail.count_messages(HELLO, MODEL)
    assert usage.output_tokens == out.usage.completion_tokens
    assert usage.reserved_usd == 0  # the reservation was swapped for the actual cost
    (record,) = records
    assert record.outcome == "ok" and record.tenant == "alice" and record.attempts == 1
    assert record.cost_usd == expected and isinstance(record.cost_usd, Decimal)
    assert record.request_id and record.usage_source == "provider"


def test_the_record_has_the_providers_request_id_for_parsed_and_raw_responses(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, sinks=[records.append])
    client.chat.completions.create(model=MODEL, messages=HELLO)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
    sent = [r.request_id for r in server.requests]
    assert [r.request_id for r in records] == sent and len(set(sent)) == 3
    assert raw.headers["x-request-id"] == sent[1]


def test_a_parsed_response_without_a_request_id_is_asked_for_nothing_else() -> None:
    from guardrail.providers.common import request_id_of

    class Parsed:  # a model: any attribute it lacks is an error, which costs pydantic
        _request_id = None

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"asked for {name}")

    class Raw:  # a raw response: its request id is its header
        headers: ClassVar[dict[str, str]] = {"x-request-id": "req_9"}

    assert request_id_of(Parsed(), "x-request-id") is None
    assert request_id_of(Raw(), "x-request-id") == "req_9"


def test_cached_and_reasoning_tokens_are_priced(server) -> None:
    server.cached_tokens = 4
    server.reasoning_tokens = 7
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, sinks=[records.append])
    out = client.chat.completions.create(model=MODEL, messages=HELLO)
    (record,) = records
    assert record.cached_input_tokens == 4 and record.reasoning_tokens == 7
    assert record.cost_usd == guardrail.estimate_cost(
        MODEL, out.usage.prompt_tokens, out.usage.completion_tokens, cached_input_tokens=4
    )


def test_passthrough_resources_and_options(server) -> None:
    guard, client = make(server)
    assert client.models.list().data  # other resources pass straight through
    assert client.embeddings.create(model="text-embedding-3-small", input="hi").data
    assert client.base_url == client.unwrapped.base_url
    copy = client.with_options(timeout=5.0)
    assert isinstance(copy, type(client))
    copy.for_tenant("bob").chat.completions.create(
        model=MODEL,
        messages=HELLO,
        extra_headers={"x-trace": "abc"},
        extra_body={"metadata": {"k": "v"}},
        temperature=openai.NOT_GIVEN,
        timeout=10,
    )
    received = server.chat_requests[-1]
    assert received.headers["x-trace"] == "abc"
    assert received.json["metadata"] == {"k": "v"}
    assert "temperature" not in received.json
    assert guard.usage("bob").requests == 1


def test_with_raw_response_is_guarded_and_settled(server) -> None:
    guard, client = make(server)
    raw = client.for_tenant("carol").chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO
    )
    assert raw.headers["x-request-id"]
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert guard.usage("carol").requests == 1
    assert guard.usage("carol").output_tokens == completion.usage.completion_tokens


def test_sdk_retries_are_off_so_one_layer_retries(server, sleeps) -> None:
    # The raw client asks for 5 SDK retries; the guard's policy allows 2 attempts in all.
    for _ in range(5):
        server.enqueue_error(500)
    guard, client = make(server, Policy(max_attempts=2), sleep=sleeps.append)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(server.chat_requests) == 2
    assert len(sleeps) == 1


def test_default_output_reservation_is_sent_as_the_bound(server) -> None:
    guard, client = make(server, Policy(default_output_tokens=50))
    client.chat.completions.create(model=MODEL, messages=HELLO)
    assert server.chat_requests[-1].json["max_completion_tokens"] == 50


def test_output_cap_clamps_or_rejects(server) -> None:
    guard, client = make(server, Policy(max_output_tokens=100))
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5000)
    assert server.chat_requests[-1].json["max_tokens"] == 100
    guard, client = make(server, Policy(max_output_tokens=100, output_over_cap="reject"))
    with pytest.raises(ContextWindowExceeded, match="output cap"):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5000)
    assert len(server.chat_requests) == 1


# -- budgets ---------------------------------------------------------------------------


def test_rejection_sends_nothing_and_names_the_numbers(server) -> None:
    cost = worst_case(HELLO, 100)
    guard, client = make(server, Policy(daily_spend_usd=cost / 2))
    with pytest.raises(BudgetExceeded) as info:
        client.for_tenant("dave").chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )
    err = info.value
    assert server.chat_requests == []
    assert err.tenant == "dave" and err.limit == "daily_spend_usd"
    assert err.requested >= cost and err.remaining == cost / 2
    assert err.resets_at is not None and err.retry_after is not None
    assert "dave" in str(err) and "daily_spend_usd" in str(err)


def test_runaway_loop_stops_at_the_daily_cap_and_tenants_are_isolated(server) -> None:
    per_call = worst_case(HELLO, 100)
    cap = per_call * 3 + per_call / 2  # room for 3 worst cases, not a 4th
    guard, client = make(server, Policy(daily_spend_usd=cap, loop_limit=None))
    alice = client.for_tenant("alice")
    sent = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(100):
            alice.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
            sent += 1
    # Actual calls cost less than the worst case, so more than 3 fit: but never the cap.
    assert sent >= 3
    assert guard.usage("alice").spent_usd <= cap
    assert len(server.chat_requests) == sent
    client.for_tenant("bob").chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    assert guard.usage("bob").requests == 1


def test_calendar_day_rollover_with_injected_clock(server, clock) -> None:
    cost = worst_case(HELLO, 100)
    guard, client = make(server, Policy(daily_spend_usd=cost, loop_limit=None), clock=clock)
    user = client.for_tenant("erin")
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    with pytest.raises(BudgetExceeded) as info:
        user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    assert info.value.resets_at.isoformat() == "2026-11-24T00:00:00+00:00"
    clock.advance(timedelta(hours=12).total_seconds())  # midnight UTC
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    assert guard.usage("erin").requests == 1  # a new day
    assert guard.usage("erin").month_spent_usd > guard.usage("erin").spent_usd


def test_monthly_cap_is_a_calendar_month(server, clock) -> None:
    cost = worst_case(HELLO, 100)
    guard, client = make(server, Policy(monthly_spend_usd=cost, loop_limit=None), clock=clock)
    user = client.for_tenant("fay")
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    clock.advance(6 * 86400)  # 2026-11-29: same month
    with pytest.raises(BudgetExceeded, match="monthly_spend_usd"):
        user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    clock.advance(2 * 86400)  # 2026-12-01
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)


def test_token_bucket_refills_with_time(server, clock) -> None:
    need = guardrail.count_messages(HELLO, MODEL) + 50
    guard, client = make(server, Policy(tokens_per_minute=need * 2, loop_limit=None), clock=clock)
    user = client.for_tenant("gus")
    for _ in range(2):
        user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
    # Unused output was refunded, so a third may still fit; drain until refused.
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(10):
            user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
    assert info.value.limit == "tokens_per_minute" and 0 < info.value.retry_after <= 60
    clock.advance(60)
    user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)


def test_parents_and_global_scopes_are_charged_together(server) -> None:
    server.reply = "word " * 300  # every call uses all of its 100 output tokens
    cost = worst_case(HELLO, 100)
    guard, client = make(
        server,
        Policy(),
        tenant_policies={"org-7": Policy(daily_spend_usd=cost * 2)},
        global_policy=Policy(daily_spend_usd=cost * 100),
    )
    a = client.for_tenant("u1", parents=["org-7"])
    b = client.for_tenant("u2", parents=["org-7"])
    a.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    b.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    with pytest.raises(BudgetExceeded) as info:
        a.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
    assert info.value.tenant == "org-7"
    assert guard.usage("org-7").requests == 2
    assert guard.store.usage("_global").requests == 2
    client.for_tenant("u3").chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)


def test_fifty_threads_never_overspend_one_cap(server) -> None:
    per_call = worst_case(HELLO, 100)
    cap = per_call * 10
    guard, client = make(server, Policy(daily_spend_usd=cap, loop_limit=None))
    user = client.for_tenant("crowd")
    ok, refused = [], []
    barrier = threading.Barrier(50)

    def call() -> None:
        barrier.wait()
        try:
            user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
            ok.append(1)
        except BudgetExceeded:
            refused.append(1)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = guard.usage("crowd")
    assert len(ok) + len(refused) == 50 and refused
    assert usage.spent_usd <= cap
    assert usage.requests == len(ok) == len(server.chat_requests)
    assert usage.reserved_usd == 0


# -- fitting ---------------------------------------------------------------------------


def long_history(turns: int, words: int = 200) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * words})
    messages.append({"role": "user", "content": "the latest question"})
    return messages


def test_too_long_prompt_is_rejected_without_trim(server) -> None:
    guard, client = make(server, Policy(max_input_tokens=1000))
    with pytest.raises(ContextWindowExceeded) as info:
        client.chat.completions.create(model=MODEL, messages=long_history(20))
    assert info.value.prompt_tokens > 1000 and info.value.limit == 1000
    assert server.chat_requests == []


def test_trim_sends_a_fitting_recent_window(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, Policy(max_input_tokens=1000, trim=True), sinks=[records.append])
    history = long_history(20)
    client.chat.completions.create(model=MODEL, messages=history)
    sent = server.chat_requests[-1].json["messages"]
    assert sent[0] == history[0] and sent[-1] == history[-1]
    assert sent[1:] == history[len(history) - len(sent) + 1 :]  # contiguous, most recent
    assert guardrail.count_messages(sent, MODEL) <= 1000
    assert records[-1].trimmed_messages == len(history) - len(sent)


def test_context_window_of_the_model_counts_reserved_output(server) -> None:
    guard, client = make(server, Policy(trim=False))
    big = [{"role": "user", "content": "word " * 8000}]
    with pytest.raises(ContextWindowExceeded, match="context window"):
        client.chat.completions.create(model="gpt-4", messages=big, max_tokens=500)
    assert server.chat_requests == []


def test_fallback_to_a_larger_window_model(server) -> None:
    records: list[guardrail.UsageRecord] = []
    guard, client = make(server, Policy(fallback_models=("gpt-4o",)), sinks=[records.append])
    big = [{"role": "user", "content": "word " * 9000}]
    client.chat.completions.create(model="gpt-4", messages=big, max_tokens=100)
    assert server.chat_requests[-1].json["model"] == "gpt-4o"
    assert records[-1].model == "gpt-4o" and "context window" in records[-1].fallback_reason


def test_fallback_to_a_cheaper_model_when_the_budget_refuses(server) -> None:
    cap = worst_case(HELLO, 100, "gpt-4o") / 2
    records: list[guardrail.UsageRecord] = []
    guard, client = make(
        server,
        Policy(daily_spend_usd=cap, fallback_models=("gpt-4o-mini",)),
        sinks=[records.append],
    )
    client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=100)
    assert server.chat_requests[-1].json["model"] == "gpt-4o-mini"
    assert records[-1].requested_model == "gpt-4o" and records[-1].model == "gpt-4o-mini"
    assert "budget" in records[-1].fallback_reason


# -- tenants ---------------------------------------------------------------------------


KEY = b"a test key of 32 bytes, say.    "


def test_tenant_resolution_order(server) -> None:
    derive = guardrail.TenantFromRequest(key=KEY)
    guard, client = make(server, default_tenant="anon", tenant_from_request=derive)
    client.chat.completions.create(model=MODEL, messages=HELLO)
    client.chat.completions.create(model=MODEL, messages=HELLO, user="from-user")
    client.chat.completions.create(
        model=MODEL, messages=HELLO, user="from-user", safety_identifier="from-safety"
    )
    with guard.tenant("from-context"):
        client.chat.completions.create(model=MODEL, messages=HELLO, user="from-user")
        client.for_tenant("explicit").chat.completions.create(model=MODEL, messages=HELLO)
    derived = [guard.request_tenant("from-user"), guard.request_tenant("from-safety")]
    for tenant in ("anon", *derived, "from-context", "explicit"):
        assert guard.usage(tenant).requests == 1, tenant


def test_request_fields_choose_no_tenant_unless_asked(server) -> None:
    guard, client = make(server, default_tenant="anon")
    for n in range(3):  # a fresh user value per call gets no fresh budget
        client.chat.completions.create(model=MODEL, messages=HELLO, user=f"u-{n}")
    client.chat.completions.create(model=MODEL, messages=HELLO, user="victim")
    assert guard.usage("anon").requests == 4 and guard.usage("victim").requests == 0


def test_derived_tenants_are_keyed_namespaced_and_capped_together(server) -> None:
    public = Policy(daily_spend_usd=Decimal("0.0001"))
    derive = guardrail.TenantFromRequest(key=KEY, parents=("public",))
    guard, client = make(server, tenant_from_request=derive, tenant_policies={"public": public})
    client.chat.completions.create(model=MODEL, messages=HELLO, user="victim", max_tokens=5)
    tenant = guard.request_tenant("victim")
    assert tenant.startswith("_r-") and tenant != "victim"
    assert guard.usage("victim").requests == 0 and guard.usage(tenant).requests == 1
    other = guardrail.Guard(tenant_from_request=guardrail.TenantFromRequest(key=b"x" * 16))
    assert other.request_tenant("victim") != tenant  # without the key, ids cannot be forged
    with pytest.raises(BudgetExceeded) as info:  # new values every call: one shared cap
        for n in range(100):
            client.chat.completions.create(model=MODEL, messages=HELLO, user=f"u{n}", max_tokens=5)
    assert info.value.tenant == "public"
    assert guard.usage("public").spent_usd <= Decimal("0.0001")
    with pytest.raises(guardrail.InvalidTenantError):
        client.for_tenant(tenant)  # an explicit id can never be a derived one


@pytest.mark.parametrize("bad", ["", "a" * 129, "x:y", "{t}", "a b", "*", "_global", "é"])
def test_tenant_ids_are_validated(server, bad: str) -> None:
    guard, client = make(server)
    with pytest.raises(guardrail.InvalidTenantError):
        client.for_tenant(bad)
    assert server.chat_requests == []


def test_no_tenant_is_an_error_when_there_is_no_default(server) -> None:
    guard, client = make(server, default_tenant=None)
    with pytest.raises(guardrail.InvalidRequestError, match="no tenant"):
        client.chat.completions.create(model=MODEL, messages=HELLO)


def test_context_tenant_is_per_task(server) -> None:
    guard, client = make(server, async_=True)

    async def as_tenant(name: str) -> None:
        with guard.tenant(name):
            await asyncio.sleep(0)
            await client.chat.completions.create(model=MODEL, messages=HELLO)

    async def main() -> None:
        await asyncio.gather(*(as_tenant(f"t{i}") for i in range(5)))

    asyncio.run(main())
    assert [guard.usage(f"t{i}").requests for i in range(5)] == [1] * 5


# -- loops -----------------------------------------------------------------------------


def test_stream_helper_and_streaming_response_are_guarded(server) -> None:
    guard, client = make(server)
    user = client.for_tenant("helper")
    with user.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == server.reply
    with user.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HELLO
    ) as response:
        assert response.parse().choices[0].message.content == server.reply
    assert guard.usage("helper").requests == 2
    assert guard.usage("helper").reserved_usd == 0


async def test_async_stream_helper_is_guarded(server) -> None:
    guard, client = make(server, async_=True)
    async with client.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == server.reply
    assert guard.usage("default").requests == 1


def test_trim_event_tells_what_was_dropped_and_refusals_are_recorded(server) -> None:
    events: list[Any] = []
    records: list[guardrail.UsageRecord] = []
    guard, client = make(
        server,
        Policy(max_input_tokens=1000, trim=True),
        on_trim=events.append,
        sinks=[records.append],
    )
    history = long_history(20)
    client.for_tenant("tt").chat.completions.create(model=MODEL, messages=history)
    (event,) = events
    assert event.tenant == "tt" and event.dropped == history[1 : 1 + len(event.dropped)]
    guard, client = make(server, Policy(max_input_tokens=10), sinks=[records.append])
    with pytest.raises(ContextWindowExceeded):
        client.for_tenant("tt").chat.completions.create(model=MODEL, messages=history)
    assert records[-1].outcome == "rejected" and "ContextWindowExceeded" in records[-1].error
