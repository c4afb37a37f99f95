"""One contract for every store: the memory store, the Redis store on fakeredis and the
Redis store on a real Redis (marked ``redis``).

Every call goes through a :class:`Twin`: it runs on the store under test *and* on a
MemoryStore with the same clock, and the outcomes must be equal (the same Reservation,
the same BudgetExceeded fields, the same UsageSummary). So each test checks a behaviour
and that every store has it identically."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from guardrail import BudgetExceeded, ManualClock, MemoryStore
from guardrail.stores.base import (
    MAX_SETTLED,
    Reservation,
    ReservationRequest,
    ScopeLimits,
    Settlement,
    UsageRow,
    usd_to_nanos,
)
from tests._redis_helpers import KINDS, Twin, cleanup, make_store

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
USD = 10**9  # nanos


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def twin(kind: str, clock: ManualClock, tmp_path: Any) -> Iterator[Twin]:
    store = make_store(kind, clock, tmp_path)
    try:
        yield Twin(store, MemoryStore(clock=clock))
    finally:
        cleanup(store)


def req(
    rid: str, *scopes: ScopeLimits, cost: int = 0, tokens: int = 0, ttl: float = 60.0
) -> ReservationRequest:
    return ReservationRequest(rid, scopes, cost, tokens, ttl_seconds=ttl, model="gpt-4o")


def paid(cost: int, inp: int = 10, out: int = 5, model: str = "gpt-4o") -> Settlement:
    return Settlement(cost_nanos=cost, input_tokens=inp, output_tokens=out, model=model)


def ok(result: tuple[str, Any]) -> Any:
    assert result[0] == "ok", result
    return result[1]


def refused(result: tuple[str, Any], limit: str) -> dict[str, Any]:
    assert result[0] == "refused", result
    assert result[1]["limit"] == limit
    return dict(result[1])


# -- every limit -------------------------------------------------------------------------


def test_daily_cap(twin: Twin) -> None:
    lim = ScopeLimits("alice", daily_nanos=1000)
    r1 = ok(twin("reserve", req("r1", lim, cost=600)))
    assert isinstance(r1, Reservation) and r1.day == "2026-11-23" and r1.month == "2026-11"
    err = refused(twin("reserve", req("r2", lim, cost=600)), "daily_spend_usd")
    assert err["tenant"] == "alice"
    assert err["requested"] == Decimal(600) / USD and err["remaining"] == Decimal(400) / USD
    assert err["cap"] == Decimal(1000) / USD
    assert err["resets_at"] == datetime(2026, 11, 24, tzinfo=UTC)
    assert err["retry_after"] == 12 * 3600
    ok(twin("reserve", req("r3", lim, cost=400)))  # exactly the cap fits
    refused(twin("reserve", req("r4", lim, cost=1)), "daily_spend_usd")


def test_monthly_cap_is_a_calendar_month(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("bob", monthly_nanos=1000)
    r = ok(twin("reserve", req("r1", lim, cost=700)))
    twin("settle", r, paid(700))
    clock.advance(6 * 86400)  # 2026-11-29: the same month
    err = refused(twin("reserve", req("r2", lim, cost=400)), "monthly_spend_usd")
    assert err["resets_at"] == datetime(2026, 12, 1, tzinfo=UTC)
    clock.advance(2 * 86400)  # 2026-12-01
    ok(twin("reserve", req("r3", lim, cost=1000)))
    usage = ok(twin("usage", "bob"))
    assert usage.month_spent_usd == 0 and usage.reserved_usd == Decimal(1000) / USD


def test_tokens_per_minute_refill(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("carol", tokens_per_minute=100)
    ok(twin("reserve", req("r1", lim, tokens=70)))
    err = refused(twin("reserve", req("r2", lim, tokens=50)), "tokens_per_minute")
    assert err["remaining"] == 30 and err["cap"] == 100 and err["retry_after"] == 12.0
    clock.advance(7.3)  # refills 12.1666... tokens: a fractional level, bit-identical
    err = refused(twin("reserve", req("r3", lim, tokens=50)), "tokens_per_minute")
    assert err["remaining"] == 42
    clock.advance(5)
    ok(twin("reserve", req("r4", lim, tokens=50)))
    err = refused(twin("reserve", req("r5", lim, tokens=101)), "tokens_per_minute")
    assert err["retry_after"] is None


def test_tokens_per_day(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("dan", tokens_per_day=1000, tokens_per_minute=600)
    ok(twin("reserve", req("r1", lim, tokens=600)))
    refused(twin("reserve", req("r2", lim, tokens=500)), "tokens_per_minute")
    clock.advance(60)
    refused(twin("reserve", req("r3", lim, tokens=500)), "tokens_per_day")
    clock.advance(3600 * 3)  # +125 tokens per 3 hours
    ok(twin("reserve", req("r4", lim, tokens=500)))


def test_day_rollover_keeps_the_month(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("erin", daily_nanos=1000, monthly_nanos=1500)
    twin("settle", ok(twin("reserve", req("r1", lim, cost=900))), paid(800))
    refused(twin("reserve", req("r2", lim, cost=300)), "daily_spend_usd")
    clock.set(datetime(2026, 11, 24, 0, 0, tzinfo=UTC))  # midnight: a new day
    usage = ok(twin("usage", "erin"))
    assert usage.day == "2026-11-24" and usage.spent_usd == 0
    assert usage.month_spent_usd == Decimal(800) / USD
    ok(twin("reserve", req("r3", lim, cost=700)))
    refused(twin("reserve", req("r4", lim, cost=1)), "monthly_spend_usd")
    yesterday = ok(twin("usage", "erin", date(2026, 11, 23)))
    assert yesterday.spent_usd == Decimal(800) / USD and yesterday.requests == 1


def test_windows_follow_the_store_time_zone(kind: str, tmp_path: Any) -> None:
    clock = ManualClock(datetime(2026, 11, 24, 3, 0, tzinfo=UTC))  # 22:00 in NY
    store = make_store(kind, clock, tmp_path, timezone="America/New_York")
    try:
        twin = Twin(store, MemoryStore(clock=clock, timezone="America/New_York"))
        lim = ScopeLimits("ny", daily_nanos=100)
        r = ok(twin("reserve", req("r1", lim, cost=100)))
        assert r.day == "2026-11-23"
        err = refused(twin("reserve", req("r2", lim, cost=1)), "daily_spend_usd")
        assert err["retry_after"] == 2 * 3600
        clock.advance(2 * 3600)  # midnight in New York
        ok(twin("reserve", req("r3", lim, cost=100)))
    finally:
        cleanup(store)


# -- settle, release, expiry ----------------------------------------------------------------


def test_settle_refunds_the_difference(twin: Twin) -> None:
    lim = ScopeLimits("fay", daily_nanos=1000, tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, cost=800, tokens=90)))
    refused(twin("reserve", req("r2", lim, cost=300)), "daily_spend_usd")
    twin("settle", r, paid(200, inp=20, out=10))
    usage = ok(twin("usage", "fay"))
    assert usage.spent_usd == Decimal(200) / USD and usage.reserved_usd == 0
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (20, 10, 1)
    ok(twin("reserve", req("r3", lim, cost=800, tokens=70)))  # the refund made room
    refused(twin("reserve", req("r4", lim, tokens=1)), "tokens_per_minute")


def test_settle_above_the_reservation_takes_more(twin: Twin) -> None:
    lim = ScopeLimits("gus", daily_nanos=1000, tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, cost=100, tokens=10)))
    twin("settle", r, paid(900, inp=40, out=30))  # the stream ran over: 70 tokens used
    err = refused(twin("reserve", req("r2", lim, cost=101)), "daily_spend_usd")
    assert err["remaining"] == Decimal(100) / USD
    refused(twin("reserve", req("r3", lim, tokens=31)), "tokens_per_minute")
    ok(twin("reserve", req("r4", lim, tokens=30)))


def test_settle_is_idempotent(twin: Twin) -> None:
    lim = ScopeLimits("hal", daily_nanos=1000, tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, cost=500, tokens=50)))
    for _ in range(3):
        twin("settle", r, paid(300, inp=20, out=10))
    twin("release", r)  # after settling: nothing to give back
    usage = ok(twin("usage", "hal"))
    assert usage.spent_usd == Decimal(300) / USD and usage.requests == 1
    refused(twin("reserve", req("r2", lim, tokens=81)), "tokens_per_minute")


def test_release_returns_everything(twin: Twin) -> None:
    lim = ScopeLimits("ivy", daily_nanos=1000, tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, cost=1000, tokens=100)))
    refused(twin("reserve", req("r2", lim, cost=1)), "daily_spend_usd")
    twin("release", r)
    twin("release", r)  # twice: once
    usage = ok(twin("usage", "ivy"))
    assert usage.reserved_usd == 0 and usage.spent_usd == 0 and usage.requests == 0
    ok(twin("reserve", req("r3", lim, cost=1000, tokens=100)))


def test_abandoned_reservations_expire(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("jay", daily_nanos=1000, tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, cost=800, tokens=60, ttl=120)))  # then it dies
    refused(twin("reserve", req("r2", lim, cost=800)), "daily_spend_usd")
    clock.advance(119.5)
    refused(twin("reserve", req("r3", lim, cost=800)), "daily_spend_usd")
    clock.advance(0.5)  # expires_at reached
    assert ok(twin("usage", "jay")).reserved_usd == 0
    ok(twin("reserve", req("r4", lim, cost=800)))
    twin("release", r)  # too late: it expired, its tokens are not given back
    twin("settle", r, paid(100))  # a late settlement still counts what was spent
    assert ok(twin("usage", "jay")).spent_usd == Decimal(100) / USD


def test_a_live_hold_is_extended(twin: Twin, clock: ManualClock) -> None:
    # A stream still running keeps its hold (extend), on every scope, past its first TTL.
    lim, parent = ScopeLimits("long", daily_nanos=1000), ScopeLimits("org", daily_nanos=5000)
    r = ok(twin("reserve", req("r1", lim, parent, cost=800, tokens=60, ttl=60)))
    clock.advance(40)
    renewed = ok(twin("extend", r, 60.0))
    assert renewed.id == r.id and renewed.expires_at == r.expires_at + 40
    clock.advance(40)  # past the first expiry: still held
    refused(twin("reserve", req("r2", lim, cost=800)), "daily_spend_usd")
    assert ok(twin("usage", "org")).reserved_usd == Decimal(800) / USD
    clock.advance(20)  # the renewed expiry: gone, as any hold
    assert ok(twin("usage", "long")).reserved_usd == 0


def test_only_a_held_reservation_is_extended(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("done", daily_nanos=1000)
    settled = ok(twin("reserve", req("r1", lim, cost=300, ttl=60)))
    twin("settle", settled, paid(200))
    assert ok(twin("extend", settled, 60.0)) is None
    expired = ok(twin("reserve", req("r2", lim, cost=300, ttl=30)))
    clock.advance(30)
    assert ok(twin("extend", expired, 60.0)) is None  # gone: its room was given back
    twin("settle", expired, paid(100))  # its late settlement still counts
    assert ok(twin("usage", "done")).spent_usd == Decimal(300) / USD


def test_release_after_expiry_gives_no_tokens_back(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("late", tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, tokens=100, ttl=30)))
    clock.advance(30)  # expired, and nothing has looked at the store since
    twin("release", r)
    refused(twin("reserve", req("r2", lim, tokens=51)), "tokens_per_minute")  # refilled 50


def test_expired_reservation_of_yesterday_returns_to_yesterday(
    twin: Twin, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 11, 23, 23, 59, tzinfo=UTC))
    lim = ScopeLimits("kim", daily_nanos=1000, monthly_nanos=2000)
    ok(twin("reserve", req("r1", lim, cost=900, ttl=600)))
    clock.advance(3600)  # 2026-11-24 00:59: a new day, the hold of the 23rd expired
    ok(twin("reserve", req("r2", lim, cost=1000)))
    old = ok(twin("usage", "kim", date(2026, 11, 23)))
    assert old.reserved_usd == 0 and old.month_spent_usd == 0


def test_settle_without_a_hold_charges_everything(twin: Twin) -> None:
    """A reservation the store never held (a call let through while the store was down)
    settles like any other: its cost and tokens are taken afterwards."""
    lim = ScopeLimits("lee", daily_nanos=1000, tokens_per_minute=100)
    unbacked = Reservation("u1", ("lee",), 0, 0, "2026-11-23", "2026-11", 0.0, 0.0, "gpt-4o")
    ok(twin("reserve", req("r0", lim, tokens=1)))  # the bucket exists
    twin("settle", unbacked, paid(600, inp=30, out=20))
    refused(twin("reserve", req("r1", lim, cost=401)), "daily_spend_usd")
    refused(twin("reserve", req("r2", lim, tokens=50)), "tokens_per_minute")
    assert ok(twin("usage", "lee")).requests == 1


def test_a_settlement_past_the_range_is_charged_at_the_maximum(twin: Twin) -> None:
    """A cost of 2**53 nano-dollars or more (a hostile usage: 10**12 output tokens) is
    charged at the store's maximum, on every store alike: never refused, never lost."""
    lim = ScopeLimits("huge", daily_nanos=USD, tokens_per_day=10**6)
    r = ok(twin("reserve", req("r1", lim, cost=100, tokens=10)))
    twin("settle", r, paid(10**16, inp=2**60, out=10**12))
    usage = ok(twin("usage", "huge"))
    assert usage.spent_usd == Decimal(MAX_SETTLED) / USD > 9_000_000
    assert (usage.input_tokens, usage.output_tokens) == (MAX_SETTLED, 0)
    refused(twin("reserve", req("r2", lim, cost=1)), "daily_spend_usd")


# -- scopes ---------------------------------------------------------------------------------


def test_tenants_are_isolated(twin: Twin) -> None:
    a = ScopeLimits("t-a", daily_nanos=100, tokens_per_minute=10)
    b = ScopeLimits("t-b", daily_nanos=100, tokens_per_minute=10)
    ok(twin("reserve", req("r1", a, cost=100, tokens=10)))
    ok(twin("reserve", req("r2", b, cost=100, tokens=10)))
    refused(twin("reserve", req("r3", a, cost=1)), "daily_spend_usd")
    assert ok(twin("usage", "t-b")).reserved_usd == Decimal(100) / USD


def test_multi_scope_is_all_or_nothing(twin: Twin) -> None:
    user = ScopeLimits("u1", daily_nanos=1000, tokens_per_minute=1000)
    org = ScopeLimits("org-7", daily_nanos=1500, tokens_per_day=10_000)
    glob = ScopeLimits("_global", monthly_nanos=10_000, tokens_per_minute=150)
    ok(twin("reserve", req("r1", user, org, glob, cost=1000, tokens=100)))
    user2 = ScopeLimits("u2", daily_nanos=1000, tokens_per_minute=1000)
    err = refused(twin("reserve", req("r2", user2, org, glob, cost=600)), "daily_spend_usd")
    assert err["tenant"] == "org-7"
    err = refused(twin("reserve", req("r3", user2, org, glob, tokens=60)), "tokens_per_minute")
    assert err["tenant"] == "_global"
    # Nothing was taken from u2 or org-7 by the refused calls.
    assert ok(twin("usage", "u2")).reserved_usd == 0
    assert ok(twin("usage", "org-7")).reserved_usd == Decimal(1000) / USD
    ok(twin("reserve", req("r4", user2, org, glob, cost=500, tokens=50)))
    for scope in ("u1", "u2", "org-7", "_global"):
        twin("usage", scope)


def test_first_failing_limit_is_reported(twin: Twin) -> None:
    lim = ScopeLimits("mo", daily_nanos=10, monthly_nanos=10, tokens_per_minute=1)
    refused(twin("reserve", req("r1", lim, cost=11, tokens=2)), "daily_spend_usd")
    refused(twin("reserve", req("r2", lim, cost=10, tokens=2)), "tokens_per_minute")


# -- reporting ------------------------------------------------------------------------------


def test_usage_report_per_scope_model_and_day(twin: Twin, clock: ManualClock) -> None:
    a, org = ScopeLimits("rep-a"), ScopeLimits("rep-org")
    for i, model in enumerate(["gpt-4o", "gpt-4o-mini", "gpt-4o"]):
        r = ok(twin("reserve", req(f"d1-{i}", a, org, cost=100)))
        twin("settle", r, paid(10 + i, inp=5, out=1, model=model))
    clock.advance(86400)
    r = ok(twin("reserve", req("d2", a, cost=100)))
    twin("settle", r, paid(7, inp=3, out=2, model="o3:high"))  # a model name with ':'
    day1, day2 = date(2026, 11, 23), date(2026, 11, 24)
    rows = ok(twin("usage_report", ["rep-a", "rep-org"], day1, day2))
    assert rows == [
        UsageRow("rep-a", day1, "gpt-4o", Decimal(22) / USD, 10, 2, 2),
        UsageRow("rep-a", day1, "gpt-4o-mini", Decimal(11) / USD, 5, 1, 1),
        UsageRow("rep-a", day2, "o3:high", Decimal(7) / USD, 3, 2, 1),
        UsageRow("rep-org", day1, "gpt-4o", Decimal(22) / USD, 10, 2, 2),
        UsageRow("rep-org", day1, "gpt-4o-mini", Decimal(11) / USD, 5, 1, 1),
    ]
    assert ok(twin("usage_report", ["rep-a"])) == rows[2:3]  # default: today
    assert ok(twin("usage_report", None, day1, day1)) == [rows[0], rows[1], rows[3], rows[4]]
    assert ok(twin("usage_report", ["nobody"], day1, day2)) == []


def test_usage_by_model(twin: Twin) -> None:
    lim = ScopeLimits("bym")
    twin("settle", ok(twin("reserve", req("r1", lim, cost=9))), paid(5, model="a"))
    twin("settle", ok(twin("reserve", req("r2", lim, cost=9))), paid(6, model="b"))
    by_model = ok(twin("usage_by_model", "bym"))
    assert sorted(by_model) == ["a", "b"] and by_model["b"].spent_usd == Decimal(6) / USD


# -- the async face -------------------------------------------------------------------------


async def test_async_face(kind: str, clock: ManualClock, tmp_path: Any) -> None:
    store = make_store(kind, clock, tmp_path)
    ref = MemoryStore(clock=clock)
    try:
        lim = ScopeLimits("async-t", daily_nanos=1000, tokens_per_minute=100)
        rs = await asyncio.gather(*(store.areserve(req(f"r{i}", lim, cost=300)) for i in range(3)))
        for r in rs:
            ref.reserve(req(r.id, lim, cost=300))
        with pytest.raises(BudgetExceeded) as info:
            await store.areserve(req("r9", lim, cost=300))
        with pytest.raises(BudgetExceeded) as ref_info:
            ref.reserve(req("r9", lim, cost=300))
        assert vars(info.value) == vars(ref_info.value)
        await store.asettle(rs[0], paid(100))
        await store.asettle(rs[0], paid(100))
        await store.arelease(rs[1])
        ref.settle(rs[0], paid(100))
        ref.release(rs[1])
        assert await store.ausage("async-t") == ref.usage("async-t")
        assert await store.ausage_report(["async-t"]) == ref.usage_report(["async-t"])
        assert await store.ausage_report() == ref.usage_report()
    finally:
        if hasattr(store, "aclose"):
            await store.aclose()
        cleanup(store)


def test_money_is_exact_integers(twin: Twin) -> None:
    lim = ScopeLimits("exact", daily_nanos=usd_to_nanos(Decimal("1000000")))  # $1M
    cost = usd_to_nanos(Decimal("0.000000001")) * 3
    for i in range(5):
        twin("settle", ok(twin("reserve", req(f"r{i}", lim, cost=cost))), paid(cost))
    assert ok(twin("usage", "exact")).spent_usd == Decimal("0.000000015")


# -- token debt and key expiry -------------------------------------------------------------


def advance(store: Any, clock: ManualClock, seconds: float) -> None:
    """Move the clock, and let a Redis store's keys age as much (a ManualClock does not move
    Redis TTLs): keys whose TTL runs out are deleted, as Redis would expire them."""
    clock.advance(seconds)
    client = getattr(store, "client", None)
    if client is None:
        return
    for key in list(client.scan_iter(match=f"{store.prefix}:*", count=1000)):
        left = client.pttl(key)
        if left < 0:
            continue  # no TTL
        if left <= seconds * 1000:
            client.delete(key)
        else:
            client.pexpire(key, left - int(seconds * 1000))


def test_debt_outlives_the_refill_of_the_bucket(twin: Twin, clock: ManualClock) -> None:
    """A call that used far more than it reserved, settled after its bucket would have
    refilled (and, in Redis, the bucket key's refill TTL ran out): the debt still counts."""
    lim = ScopeLimits("debt", tokens_per_minute=100, tokens_per_day=100_000)
    r = ok(twin("reserve", req("r1", lim, tokens=10, ttl=900)))
    advance(twin.store, clock, 70)  # 10 tokens refill in 6 s: the bucket is full again
    twin("settle", r, paid(0, inp=200, out=50))  # 250 used: 240 more than reserved
    # 90 - 240 + 70 s * 100/60: about -33 tokens; refused everywhere, not only in memory
    refused(twin("reserve", req("r2", lim, tokens=1)), "tokens_per_minute")
    advance(twin.store, clock, 20)  # +33.3: about 0
    refused(twin("reserve", req("r3", lim, tokens=1)), "tokens_per_minute")
    advance(twin.store, clock, 60)  # full again
    ok(twin("reserve", req("r4", lim, tokens=100)))


def test_debt_of_concurrent_calls_outlives_a_shorter_reservation(
    twin: Twin, clock: ManualClock
) -> None:
    """A later, shorter reservation does not cut the bucket key's life under an earlier,
    longer one: the long call's debt still counts when it settles."""
    lim = ScopeLimits("debt2", tokens_per_minute=100)
    long_call = ok(twin("reserve", req("r1", lim, tokens=10, ttl=900)))
    advance(twin.store, clock, 30)
    short = ok(twin("reserve", req("r2", lim, tokens=10, ttl=5)))
    twin("settle", short, paid(0, inp=5, out=5))  # used what it reserved
    advance(twin.store, clock, 200)
    # 590 more than reserved: stored 90 - 590 at t30, read at t230 as -500 + 333.3
    twin("settle", long_call, paid(0, inp=500, out=100))
    refused(twin("reserve", req("r3", lim, tokens=1)), "tokens_per_minute")
    advance(twin.store, clock, 300)
    ok(twin("reserve", req("r4", lim, tokens=100)))


def test_refund_past_capacity_then_debt(twin: Twin, clock: ManualClock) -> None:
    """Refunds can lift a stored level above capacity (it is read capped); a debt taken
    after that starts from the same stored level in every store."""
    lim = ScopeLimits("over", tokens_per_minute=100)
    a = ok(twin("reserve", req("r1", lim, tokens=40, ttl=900)))
    advance(twin.store, clock, 30)  # refilled to 100 (stored 60 at t0)
    b = ok(twin("reserve", req("r2", lim, tokens=40, ttl=900)))  # stored 60 at t30
    twin("release", a)  # stored 100
    twin("settle", b, paid(0, inp=0, out=0))  # stored 140: above capacity
    advance(twin.store, clock, 1)
    c = ok(twin("reserve", req("r3", lim, tokens=100, ttl=900)))  # read as 100: stored 0
    twin("settle", c, paid(0, inp=150, out=0))  # stored -50
    refused(twin("reserve", req("r4", lim, tokens=1)), "tokens_per_minute")
    advance(twin.store, clock, 31)  # -50 + 51.67
    refused(twin("reserve", req("r5", lim, tokens=2)), "tokens_per_minute")
    ok(twin("reserve", req("r6", lim, tokens=1)))


def test_late_settlement_of_an_expired_hold_keeps_its_token_debt(
    twin: Twin, clock: ManualClock
) -> None:
    """A settlement replayed an hour after its reservation expired (the spool, after an
    outage), which used far more than it reserved: spend and token debt both count, once."""
    lim = ScopeLimits("replay", daily_nanos=10**6, tokens_per_day=100_000)
    r = ok(twin("reserve", req("r1", lim, cost=500, tokens=10, ttl=60)))
    advance(twin.store, clock, 3600)
    assert ok(twin("usage", "replay")).reserved_usd == 0  # the hold expired
    late = paid(700, inp=150_000, out=50_000)
    twin("settle", r, late)
    twin("settle", r, late)  # and once more, as a second replay would
    usage = ok(twin("usage", "replay"))
    assert usage.spent_usd == Decimal(700) / USD and usage.requests == 1
    # 99,990 - 199,990 stored an hour ago, +4,166.7 refilled since: deep in debt
    refused(twin("reserve", req("r2", lim, tokens=1)), "tokens_per_day")
    advance(twin.store, clock, 86400)
    ok(twin("reserve", req("r3", lim, tokens=1)))


def test_a_replay_days_later_is_still_recognised(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("again", daily_nanos=10**6, tokens_per_minute=1000)
    r = ok(twin("reserve", req("r1", lim, cost=500, tokens=10)))
    twin("settle", r, paid(300))
    ok(twin("reserve", req("r2", lim, cost=1)))  # the scope stays in use
    advance(twin.store, clock, 3 * 86400)
    twin("settle", r, paid(300))  # a stale spool replayed three days on: not applied again
    assert ok(twin("usage", "again", START.date())).spent_usd == Decimal(300) / USD


def test_a_settlement_after_a_release_is_a_replay(twin: Twin) -> None:
    """Release is final: the call failed without usage; nothing is spent afterwards."""
    lim = ScopeLimits("final", daily_nanos=1000, tokens_per_minute=100)
    r = ok(twin("reserve", req("r1", lim, cost=500, tokens=50)))
    twin("release", r)
    twin("settle", r, paid(300))
    usage = ok(twin("usage", "final"))
    assert usage.spent_usd == 0 and usage.requests == 0 and usage.reserved_usd == 0
    ok(twin("reserve", req("r2", lim, cost=1000, tokens=100)))


# -- calls in flight ------------------------------------------------------------------------


def test_max_in_flight_counts_reservations_not_yet_settled(twin: Twin, clock: ManualClock) -> None:
    lim = ScopeLimits("busy", daily_nanos=10**6, max_in_flight=2)
    r1 = ok(twin("reserve", req("r1", lim, cost=1, ttl=60)))
    r2 = ok(twin("reserve", req("r2", lim, cost=1, ttl=600)))
    err = refused(twin("reserve", req("r3", lim, cost=1)), "max_in_flight")
    assert (err["requested"], err["remaining"], err["cap"]) == (1, 0, 2)
    twin("settle", r1, paid(1))  # a slot comes back
    r4 = ok(twin("reserve", req("r4", lim, cost=1, ttl=60)))
    refused(twin("reserve", req("r5", lim, cost=1)), "max_in_flight")
    twin("release", r2)  # and another
    ok(twin("reserve", req("r6", lim, cost=1, ttl=60)))
    twin("settle", r1, paid(1))  # a replay gives nothing back
    refused(twin("reserve", req("r7", lim, cost=1)), "max_in_flight")
    clock.advance(60)  # r4 and r6 die unsettled: their slots come back when they expire
    ok(twin("reserve", req("r8", lim, cost=1)))
    ok(twin("reserve", req("r9", lim, cost=1)))
    refused(twin("reserve", req("r10", lim, cost=1)), "max_in_flight")
    twin("settle", r4, paid(1))  # late: applied, but its slot was already returned
    refused(twin("reserve", req("r11", lim, cost=1)), "max_in_flight")


def test_max_in_flight_of_a_parent_scope(twin: Twin) -> None:
    user = ScopeLimits("u-9", max_in_flight=5)
    org = ScopeLimits("org-9", max_in_flight=1)
    r = ok(twin("reserve", req("r1", user, org)))
    err = refused(twin("reserve", req("r2", ScopeLimits("u-8"), org)), "max_in_flight")
    assert err["tenant"] == "org-9"
    twin("release", r)
    ok(twin("reserve", req("r3", ScopeLimits("u-8"), org)))
