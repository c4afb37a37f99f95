"""Review of the live-hash Redis store: regression tests for the bugs a review found (settle
and release trusted the caller's cost and day over the hold's; a fail-open settlement of a
held id was applied twice on replay; the daily spend forgot yesterday for a host a little
behind at midnight; a scan of thousands of expired holds overflowed Lua's unpack; monthly
spend fields grew for ever), and edge cases the rest of the suite does not cover (odd ids and
model names, multi-scope reservations whose holds were only partly scanned away, live
hashes lost mid-flight, TTLs of every key). Deterministic: a ManualClock, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardrail import ManualClock, MemoryStore
from guardrail.stores.base import Reservation, ReservationRequest, ScopeLimits, Settlement
from tests._redis_helpers import Twin, cleanup, make_store

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
USD = 10**9
REDIS_KINDS = ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=REDIS_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(kind: str, clock: ManualClock, tmp_path: Path) -> Iterator[Any]:
    s = make_store(kind, clock, tmp_path)
    try:
        yield s
    finally:
        cleanup(s)


@pytest.fixture
def twin(store: Any, clock: ManualClock) -> Twin:
    return Twin(store, MemoryStore(clock=clock))


def req(
    rid: str, *scopes: ScopeLimits, cost: int = 0, tokens: int = 0, ttl: float = 60.0
) -> ReservationRequest:
    return ReservationRequest(rid, scopes, cost, tokens, ttl_seconds=ttl, model="m")


def ok(result: tuple[str, Any]) -> Any:
    assert result[0] == "ok", result
    return result[1]


def live(store: Any, scope: str) -> dict[str, str]:
    raw = store.client.hgetall(f"{store.key_prefix(scope)}s")
    return {k.decode(): v.decode() for k, v in raw.items()}


def unheld(r: Reservation, now: float, day: str) -> Reservation:
    """What the engine settles when reserve failed on its side (fail_open): the same id,
    nothing held (guardrail.engine.holds._unheld)."""
    return Reservation(r.id, r.scopes, 0, 0, day, day[:7], now, now, r.model)


# -- bugs -----------------------------------------------------------------------------------


def test_a_reserve_retried_after_midnight_settles_its_own_hold(
    store: Any, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC))
    lim = ScopeLimits("retry", daily_nanos=1000)
    request = req("r1", lim, cost=600)
    store.reserve(request)  # the script ran, but its answer was lost
    clock.advance(2)  # 2026-11-24 00:00:01: the client's retry
    r = store.reserve(request)  # "held already": the same hold
    store.settle(r, Settlement(600, 1, 1, "m"))
    assert store.usage("retry").reserved_usd == 0  # Redis: -600 held on the 24th
    assert store.usage("retry", date(2026, 11, 23)).reserved_usd == 0  # +600 leaked


@pytest.mark.parametrize("op", ["settle", "release"])
def test_a_fail_open_settlement_of_a_held_id_returns_the_hold(
    store: Any, clock: ManualClock, op: str
) -> None:
    lim = ScopeLimits("lost-reply", monthly_nanos=1000)
    r = store.reserve(req("r1", lim, cost=700, ttl=60))  # ran; the engine saw a timeout
    if op == "settle":  # the call went through (failed open)
        store.settle(unheld(r, clock(), r.day), Settlement(100, 1, 1, "m"))
    else:  # the call failed without usage
        store.release(unheld(r, clock(), r.day))
    clock.advance(3600)  # long past the hold's expiry
    assert store.usage("lost-reply").reserved_usd == 0  # Redis: 700 held for good
    store.reserve(req("r2", lim, cost=900))  # at most 100 spent of 1000: 900 fits


@pytest.mark.parametrize("expired", [False, True], ids=["held", "expired"])
def test_a_fail_open_settlement_of_a_held_id_is_applied_once(
    store: Any, clock: ManualClock, expired: bool
) -> None:
    lim = ScopeLimits("lost-twice", daily_nanos=10**6)
    r = store.reserve(req("r1", lim, cost=700, ttl=60))  # ran; the engine saw a timeout
    if expired:
        clock.advance(61)
        store.usage("lost-twice")  # the hold goes; its marker stays
    s = Settlement(100, 1, 1, "m")
    for _ in range(3):  # the settlement, then replays (client retry, spool after a crash)
        store.settle(unheld(r, clock(), r.day), s)
    usage = store.usage("lost-twice")
    assert usage.requests == 1 and usage.spent_usd == Decimal(100) / USD  # Redis: twice


def test_clock_a_little_behind_at_midnight_keeps_the_daily_cap(
    twin: Twin, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 11, 23, 23, 59, 50, tzinfo=UTC))
    lim = ScopeLimits("skew", daily_nanos=1000)
    r1 = ok(twin("reserve", req("a", lim, cost=900)))
    twin("settle", r1, Settlement(900, 1, 1, "m"))  # 900 of 1000 spent on the 23rd
    clock.advance(15)  # a host on time: 00:00:05 on the 24th
    r2 = ok(twin("reserve", req("b", lim, cost=10)))
    twin("settle", r2, Settlement(10, 1, 1, "m"))  # ds moves to the 24th
    clock.set(clock() - 10)  # a host 10 s behind: 23:59:55 on the 23rd
    twin("reserve", req("c", lim, cost=500))  # memory refuses (900 + 500 > 1000)


@pytest.mark.redis
def test_a_scan_of_thousands_of_expired_holds(clock: ManualClock, tmp_path: Path) -> None:
    store = make_store("redis", clock, tmp_path)
    try:
        lim = ScopeLimits("crowd", daily_nanos=10**12)
        made = [store.reserve(req(f"r{n}", lim, cost=1)) for n in range(4100)]  # in flight
        clock.advance(3600)  # when a fleet was killed; nobody looked at the scope since
        assert store.usage("crowd").reserved_usd == 0  # Redis: too many results to unpack
        store.settle(made[0], Settlement(1, 1, 1, "m"))  # a late settlement: applied once
        assert store.usage("crowd").requests == 1
    finally:
        cleanup(store)


def test_the_live_hash_does_not_keep_every_month(store: Any, clock: ManualClock) -> None:
    lim = ScopeLimits("old", monthly_nanos=10**6)
    for n in range(15):  # a call a month for 15 months
        store.settle(store.reserve(req(f"r{n}", lim, cost=5)), Settlement(5, 1, 1, "m"))
        clock.advance(31 * 86400)
    store.reserve(req("last", lim, cost=5))
    months = [f for f in live(store, "old") if f.startswith("ms:")]
    assert len(months) <= 3, months  # Redis: 15, one per month since the first


# -- edges that hold ------------------------------------------------------------------------

ODD = ["r 1", "r%d%s", "r-(%S+)", "r.*[", "ré€", "r\n2", "r" * 2000, "h:x", "x:h"]
MODELS = ["gpt 4o", "%s %d", "模型", "", "u:v", "a-b", "m" * 500]


def test_odd_ids_and_model_names(twin: Twin, clock: ManualClock) -> None:
    """Ids and model names are data, never patterns: spaces, '%', '-', unicode, newlines,
    very long ones, and names that look like other fields of the live hash."""
    lim = ScopeLimits("odd", daily_nanos=10**6, tokens_per_minute=10**4)
    org = ScopeLimits("odd-org", monthly_nanos=10**7)
    held = [ok(twin("reserve", req(rid, lim, org, cost=100, tokens=10))) for rid in ODD]
    for n, r in enumerate(held):
        if n % 3 == 2:
            twin("release", r)
        s = Settlement(50 + n, 10, 5, MODELS[n % len(MODELS)])
        twin("settle", r, s)
        twin("settle", r, Settlement(999, 1, 1, "replay"))  # a replay: not applied
    for scope in ("odd", "odd-org"):
        usage = ok(twin("usage", scope))
        assert usage.reserved_usd == 0 and usage.requests == 6
    twin("usage_report", ["odd", "odd-org"])
    assert {row.model for row in twin.store.usage_report(["odd"])} <= set(MODELS)
    # the same ids expiring unsettled: markers, then late settlements, once
    held = [ok(twin("reserve", req(f"{rid}/2", lim, cost=100, ttl=30))) for rid in ODD]
    clock.advance(31)
    assert ok(twin("usage", "odd")).reserved_usd == 0
    for r in held:
        twin("settle", r, Settlement(7, 1, 1, "late"))
        twin("settle", r, Settlement(7, 1, 1, "late"))
    assert ok(twin("usage", "odd")).requests == 6 + len(ODD)
    assert not any(f.startswith(("h:", "x:")) for f in live(twin.store, "odd"))


def test_late_settlement_when_only_some_scopes_were_scanned(twin: Twin, clock: ManualClock) -> None:
    """A user + org + _global reservation expires; only the org is looked at (so only its
    hold is returned) before the late settlement: the settlement takes the holds still
    there, counts the spend once everywhere, and its replay is skipped."""
    user = ScopeLimits("u", daily_nanos=1000, tokens_per_minute=100)
    org = ScopeLimits("o", daily_nanos=2000, tokens_per_minute=200)
    glob = ScopeLimits("_global", monthly_nanos=5000)
    r = ok(twin("reserve", req("r1", user, org, glob, cost=800, tokens=50, ttl=30)))
    clock.advance(31)
    r2 = ok(twin("reserve", req("r2", org, cost=600)))  # scans the org only
    assert live(twin.store, "u").get("h:r1") and "h:r1" not in live(twin.store, "o")
    twin("settle", r, Settlement(300, 20, 10, "m"))
    twin("settle", r, Settlement(300, 20, 10, "m"))
    for scope in ("u", "o", "_global"):
        usage = ok(twin("usage", scope))
        assert usage.spent_usd == Decimal(300) / USD and usage.requests == 1
    assert ok(twin("usage", "u")).reserved_usd == 0
    # and the other order: the user (the first scope) is scanned first
    r4 = ok(twin("reserve", req("r4", user, org, glob, cost=10, ttl=30)))
    clock.advance(31)
    ok(twin("usage", "u"))  # the user's hold goes, with a marker; the org's stays
    assert "x:r4" in live(twin.store, "u") and "h:r4" in live(twin.store, "o")
    twin("release", r2)
    twin("release", r4)  # expired: nothing to release
    twin("settle", r4, Settlement(5, 1, 1, "m"))
    for scope in ("u", "o", "_global"):
        assert ok(twin("usage", scope)).reserved_usd == 0
    assert not any(f.startswith(("h:", "x:")) for f in live(twin.store, "o"))


def test_no_limits_cost_zero_tokens_zero_and_only_a_monthly_cap(twin: Twin) -> None:
    free = ScopeLimits("free")
    monthly = ScopeLimits("monthly", monthly_nanos=100)
    r = ok(twin("reserve", req("r1", free, monthly)))
    twin("settle", r, Settlement(0, 0, 0, "m"))
    r = ok(twin("reserve", req("r2", free, monthly, cost=100, tokens=0)))
    twin("reserve", req("r3", monthly, cost=1))  # refused: the month is held
    twin("settle", r, Settlement(100, 0, 0, "m"))
    twin("reserve", req("r4", monthly, cost=1))  # refused: the month is spent
    ok(twin("reserve", req("r5", monthly, cost=0)))
    for scope in ("free", "monthly"):
        assert ok(twin("usage", scope)).requests == 2


def test_live_hashes_lost_mid_flight_settle_once(twin: Twin, store: Any) -> None:
    """A non-first scope's live hash is lost: the settlement still takes the first scope's
    hold and counts the spend on both; then the first scope's is lost too: the settlement
    of another reservation goes through the done set and takes the org's hold."""
    user, org = ScopeLimits("lu", daily_nanos=10**6), ScopeLimits("lo", daily_nanos=10**6)
    r1 = ok(twin("reserve", req("r1", user, org, cost=300, tokens=0)))
    r2 = ok(twin("reserve", req("r2", user, org, cost=200, tokens=0)))
    store.client.delete(f"{store.key_prefix('lo')}s")
    store.settle(r1, Settlement(100, 1, 1, "m"))
    store.settle(r1, Settlement(100, 1, 1, "m"))
    assert store.usage("lu").reserved_usd == Decimal(200) / USD
    assert store.usage("lo").requests == 1 and store.usage("lo").reserved_usd == 0
    ok(twin("reserve", req("r3", org, cost=50)))  # the org has a hold again
    store.client.delete(f"{store.key_prefix('lu')}s")
    for _ in range(3):
        store.settle(r2, Settlement(70, 1, 1, "m"))  # once, then replays (done set)
    for scope in ("lu", "lo"):
        assert store.usage(scope).requests == 2
    assert store.usage("lo").spent_usd == Decimal(170) / USD
    assert store.usage("lo").reserved_usd == Decimal(50) / USD  # r3 only
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        assert store.client.ttl(key) > 0, key


def test_every_key_has_a_ttl_that_outlives_its_holds(store: Any, clock: ManualClock) -> None:
    lim = ScopeLimits("ttl", daily_nanos=10**6, tokens_per_day=1000)
    store.reserve(req("long", lim, cost=5, tokens=10, ttl=60 * 86400.0))  # 60 days
    fail_open = Reservation("fo", ("ttl",), 0, 0, "2026-11-23", "2026-11", 0.0, 0.0, "m")
    store.settle(store.reserve(req("a", lim, cost=5, tokens=10)), Settlement(4, 1, 1, "m"))
    store.release(store.reserve(req("b", lim, cost=5, tokens=10)))
    store.reserve(req("dead", lim, cost=5, tokens=10, ttl=30))
    store.settle(fail_open, Settlement(1, 5000, 0, "m"))  # a token debt: days to refill
    clock.advance(31)
    store.usage("ttl")  # "dead" expires: a marker
    assert "x:dead" in live(store, "ttl")
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        assert store.client.ttl(key) > 0, key
    remaining = store.client.ttl(f"{store.key_prefix('ttl')}s")
    assert remaining >= 60 * 86400 - 31  # past the 60-day hold
    assert remaining >= 35 * 86400 + 7 * 86400  # past the month and the retention
