"""The Redis store beyond the shared contract: scripts, keys, TTLs, escaping, the spool,
the Cluster rule, and a property test that it decides exactly like the memory store."""

from __future__ import annotations

import json
import random
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import ConfigurationError, Guard, ManualClock, MemoryStore, Policy
from guardrail.stores.base import ReservationRequest, ScopeLimits, Settlement
from guardrail.stores.redis import SCRIPTS, RedisStore, script_source
from guardrail.stores.spool import Spool
from tests._redis_helpers import (
    REDIS_URL,
    RedisServer,
    Twin,
    cleanup,
    make_store,
    unique_prefix,
)

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LUA = Path(__file__).parent.parent / "guardrail" / "stores" / "redis" / "lua"

redis_only = pytest.mark.redis


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(clock: ManualClock, tmp_path: Path) -> Any:
    s = make_store("redis", clock, tmp_path)
    yield s
    cleanup(s)


def req(rid: str, *scopes: ScopeLimits, cost: int = 0, tokens: int = 0) -> ReservationRequest:
    return ReservationRequest(rid, scopes, cost, tokens, ttl_seconds=60, model="m")


# -- scripts --------------------------------------------------------------------------------


def test_each_script_is_a_package_file_with_a_keys_argv_header() -> None:
    for name in SCRIPTS:
        text = (LUA / f"{name}.lua").read_text()
        header = text.split("\n\n", 1)[0]
        assert header.startswith(f"-- {name}.lua: ")
        assert "KEYS[" in header and "ARGV[" in header
        source = script_source(name)
        assert not re.search(r"^--! include", source, re.M) and "local function scan" in source


def test_scripts_survive_script_flush(clock: ManualClock, tmp_path: Path) -> None:
    with RedisServer(tmp_path, durable=False) as server:  # a private one: we flush it
        store = RedisStore.from_url(server.url, clock=clock, spool_path=tmp_path / "s")
        lim = ScopeLimits("flush", daily_nanos=100)
        store.settle(store.reserve(req("r1", lim, cost=50)), Settlement(40, 1, 1, "m"))
        shas = [store._scripts[name].sha for name in ("reserve", "settle")]
        assert store.client.script_exists(*shas) == [True, True]
        store.client.script_flush()
        assert store.client.script_exists(*shas) == [False, False]
        r2 = store.reserve(req("r2", lim, cost=50))  # NOSCRIPT: loaded again, once
        store.settle(r2, Settlement(40, 1, 1, "m"))
        assert store.usage("flush").spent_usd == Decimal(80) / 10**9
        assert store.client.script_exists(*shas) == [True, True]
        store.close()


# -- keys -----------------------------------------------------------------------------------


@redis_only
def test_key_layout_and_ttls(store: RedisStore, clock: ManualClock) -> None:
    lim = ScopeLimits("ttl-t", daily_nanos=10**9, tokens_per_minute=600)
    r = store.reserve(req("r1", lim, cost=5, tokens=300))
    base = store.key_prefix("ttl-t")
    assert base == f"{store.prefix}:{{ttl-t}}:ttl-t:"
    keys = {k.decode() for k in store.client.scan_iter(match=f"{store.prefix}:*")}
    assert keys == {f"{base}s"}  # a reservation writes only the scope's live hash
    live = {k.decode(): v.decode() for k, v in store.client.hgetall(f"{base}s").items()}
    assert live["h:r1"].split()[:2] == ["5", "2026-11-23"]
    assert live["dh:2026-11-23"] == live["mh:2026-11"] == "5"
    assert live["g"] == r.token == "r1"  # the generation: the reservation that made it
    retention = 35 * 86400
    # The live hash outlives the month it holds in (7.5 days left), plus the retention.
    assert 7.5 * 86400 + retention - 5 <= store.client.ttl(f"{base}s") <= 7.5 * 86400 + retention

    store.settle(r, Settlement(5, 1, 1, "m"))
    keys = {k.decode() for k in store.client.scan_iter(match=f"{store.prefix}:*")}
    assert keys == {f"{base}s", f"{base}d:2026-11-23"}  # the day hash: usage for reports
    day_ttl = store.client.ttl(f"{base}d:2026-11-23")
    assert 12 * 3600 + retention - 5 <= day_ttl <= 12 * 3600 + retention
    live = {k.decode(): v.decode() for k, v in store.client.hgetall(f"{base}s").items()}
    assert not any(f.startswith(("h:", "x:")) for f in live)  # settled: nothing left behind
    assert live["ds"] == "2026-11-23 5" and live["ms:2026-11"] == "5"
    assert live["dh:2026-11-23"] == live["mh:2026-11"] == "0"


@redis_only
def test_a_tenant_takes_constant_memory_whatever_its_calls(store: RedisStore) -> None:
    """A settled call leaves no per-call state (no settled-id set): replays are told apart
    by the hold they no longer find."""
    lim = ScopeLimits("busy", daily_nanos=10**12, tokens_per_minute=10**9)

    def size() -> int:
        keys = list(store.client.scan_iter(match=f"{store.prefix}:*"))
        return sum(store.client.memory_usage(k) or 0 for k in keys)

    for n in range(10):
        store.settle(store.reserve(req(f"a{n}", lim, cost=5, tokens=3)), Settlement(4, 1, 1, "m"))
    after_10 = size()
    for n in range(500):
        store.settle(store.reserve(req(f"b{n}", lim, cost=5, tokens=3)), Settlement(4, 1, 1, "m"))
    assert size() <= after_10 + 64  # number text grows by a few bytes, nothing per call
    assert store.usage("busy").requests == 510


@redis_only
def test_settlement_after_redis_lost_the_scope_is_applied_once(store: RedisStore) -> None:
    """Redis lost the scope's state between reserve and settle (a restart without
    persistence, a failover): the settlement finds no hold, in a hash of another generation
    or none, and is applied once; its replays are recognised."""
    lim = ScopeLimits("lost", daily_nanos=10**6, tokens_per_minute=1000)
    r1 = store.reserve(req("r1", lim, cost=500, tokens=10))
    r2 = store.reserve(req("r2", lim, cost=500, tokens=10))
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        store.client.delete(key)  # everything is gone
    store.settle(r1, Settlement(300, 1, 1, "m"))  # no hash at all
    store.reserve(req("r3", lim, cost=1))  # a new generation of the hash
    store.settle(r2, Settlement(200, 1, 1, "m"))
    for r in (r1, r2, r1, r2):
        store.settle(r, Settlement(300, 1, 1, "m"))  # replays
    usage = store.usage("lost")
    assert usage.spent_usd == Decimal(500) / 10**9 and usage.requests == 2


@redis_only
def test_abandoned_holds_leave_a_marker_that_is_forgotten(
    store: RedisStore, clock: ManualClock
) -> None:
    """A hold that expires unsettled is returned by the next look at its scope and leaves
    a marker (so its late settlement is applied once); the marker goes after the
    retention, so abandoned calls do not grow a tenant's state for ever."""
    lim = ScopeLimits("gone", daily_nanos=1000)
    live = f"{store.key_prefix('gone')}s"
    store.reserve(req("dead", lim, cost=900))  # its worker dies
    clock.advance(61)
    assert store.usage("gone").reserved_usd == 0
    fields = {k.decode() for k in store.client.hkeys(live)}
    assert "x:dead" in fields and "h:dead" not in fields
    clock.advance(store.retention_seconds + 61)
    store.reserve(req("next", lim, cost=10))
    fields = {k.decode() for k in store.client.hkeys(live)}
    assert not any(f.startswith("x:") for f in fields) and "h:next" in fields


@redis_only
def test_scope_ids_are_escaped_and_cannot_collide(store: RedisStore) -> None:
    # The guard validates ids; the store must still not trust them.
    nasty = ["a:b", "a%3Ab", "x}:{y", "{t}", "*", "é", "a b", "_global"]
    for i, scope in enumerate(nasty):
        store.settle(
            store.reserve(req(f"r{i}", ScopeLimits(scope), cost=9)), Settlement(i + 1, 0, 0, "m")
        )
    for i, scope in enumerate(nasty):
        assert store.usage(scope).spent_usd == Decimal(i + 1) / 10**9, scope
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        text = key.decode()
        tag = text[len(store.prefix) + 1 :]
        assert tag.startswith("{") and tag.count("{") == 1 and tag.count("}") == 1
        assert not set("*?[] ") & set(text)
    assert {row.scope for row in store.usage_report()} == set(nasty)


def test_prefix_and_ranges_are_validated(tmp_path: Path) -> None:
    fakeredis = pytest.importorskip("fakeredis")
    client = fakeredis.FakeRedis()
    for bad in ["", "a{b}", "a*", "x" * 65, "a b"]:
        with pytest.raises(ConfigurationError, match="prefix"):
            RedisStore(client, prefix=bad, spool_path=tmp_path / "s")
    with pytest.raises(ConfigurationError, match="client"):
        RedisStore(None)
    store = RedisStore(client, spool_path=tmp_path / "s")
    with pytest.raises(ConfigurationError, match="2\\*\\*53"):
        store.reserve(req("r", ScopeLimits("t", daily_nanos=2**53), cost=1))


def test_missing_redis_package_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"guardrail-limits\[redis\]"):
        RedisStore.from_url("redis://localhost")


def test_cluster_needs_one_hash_tag_per_call(tmp_path: Path) -> None:
    fakeredis = pytest.importorskip("fakeredis")
    pytest.importorskip("lupa")
    user, org = ScopeLimits("u1"), ScopeLimits("org-7")
    store = RedisStore(fakeredis.FakeRedis(), spool_path=tmp_path / "s")
    store.codec.cluster = True  # as if the client were a redis.cluster.RedisCluster
    store.reserve(req("r0", user))  # one scope: always fine
    with pytest.raises(ConfigurationError, match="hash tag"):
        store.reserve(req("r1", user, org))
    tags = {"u1": "org-7", "org-7": "org-7"}
    grouped = RedisStore(
        fakeredis.FakeRedis(), hash_tag=tags.__getitem__, spool_path=tmp_path / "t"
    )
    grouped.codec.cluster = True
    r = grouped.reserve(req("r2", user, org, cost=5))
    assert grouped.key_prefix("u1") == "guardrail:{org-7}:u1:"
    grouped.settle(r, Settlement(3, 1, 1, "m"))
    assert grouped.usage("org-7").spent_usd == Decimal(3) / 10**9


# -- the spool ------------------------------------------------------------------------------


def test_spool_replays_in_order_once_and_survives_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl")
    assert not spool.pending()
    for i in range(4):
        spool.append({"op": "x", "n": i})
    assert spool.pending() and [r["n"] for r in spool.records()] == [0, 1, 2, 3]
    seen: list[int] = []

    def apply(record: dict[str, Any]) -> None:
        if record["n"] == 2 and not seen.count(-1):
            seen.append(-1)
            raise ConnectionError("down again")
        seen.append(record["n"])

    with pytest.raises(ConnectionError):
        spool.replay(apply)
    assert seen == [0, 1, -1] and [r["n"] for r in spool.records()] == [2, 3]
    assert spool.replay(apply) == 2 and seen == [0, 1, -1, 2, 3]
    assert spool.records() == [] and (tmp_path / "s.jsonl").stat().st_size == 0
    # A torn last line (the process died mid-write) is skipped, the rest replays.
    spool.append({"op": "x", "n": 9})
    with open(tmp_path / "s.jsonl", "a") as f:
        f.write('{"sid": "torn", "op"')
    assert [r["n"] for r in spool.records()] == [9]


def test_settle_goes_to_the_spool_when_redis_fails(clock: ManualClock, tmp_path: Path) -> None:
    fakeredis = pytest.importorskip("fakeredis")
    pytest.importorskip("lupa")
    server = fakeredis.FakeServer()
    store = RedisStore(fakeredis.FakeRedis(server=server), clock=clock, spool_path=tmp_path / "s")
    lim = ScopeLimits("sp", daily_nanos=1000)
    r1, r2 = store.reserve(req("r1", lim, cost=400)), store.reserve(req("r2", lim, cost=400))
    server.connected = False
    store.settle(r1, Settlement(100, 1, 1, "m"))  # no exception: spooled
    store.release(r2)
    records = store.spool.records()
    assert [rec["op"] for rec in records] == ["settle", "release"]
    assert json.loads(json.dumps(records[0]["r"]))["id"] == "r1"
    server.connected = True
    store.usage("sp")  # the first call that succeeds replays the spool
    assert store.spool.records() == []
    assert store.usage("sp").reserved_usd == 0
    assert store.usage("sp").spent_usd == Decimal(100) / 10**9
    assert store.spool.records() == []
    store.settle(r1, Settlement(100, 1, 1, "m"))  # a second replay of the same settlement
    assert store.usage("sp").requests == 1


# -- the guard on Redis ---------------------------------------------------------------------


@redis_only
def test_guard_usage_report_on_redis(server: Any, clock: ManualClock, tmp_path: Path) -> None:
    import openai

    store = make_store("redis", clock, tmp_path)
    try:
        guard = Guard(Policy(daily_spend_usd=1), store=store)
        client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
        hello = [{"role": "user", "content": "hi"}]
        client.for_tenant("rep-u", parents=["rep-org"]).chat.completions.create(
            model="gpt-4o", messages=hello
        )
        rows = guard.usage_report(["rep-u", "rep-org"])
        assert [(r.scope, r.model, r.requests) for r in rows] == [
            ("rep-org", "gpt-4o", 1),
            ("rep-u", "gpt-4o", 1),
        ]
        assert rows[0].cost_usd == guard.usage("rep-u").spent_usd > 0
        assert guard.usage_report() == rows
    finally:
        cleanup(store)


@redis_only
async def test_guard_async_client_on_redis(server: Any, clock: ManualClock, tmp_path: Path) -> None:
    import asyncio

    import openai

    store = make_store("redis", clock, tmp_path)
    try:
        guard = Guard(Policy(daily_spend_usd=10, loop_limit=None), store=store)
        client = guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="t"))
        hello = [{"role": "user", "content": "hi"}]
        user = client.for_tenant("async-u")
        await asyncio.gather(
            *(user.chat.completions.create(model="gpt-4o", messages=hello) for _ in range(8))
        )
        usage = await guard.ausage("async-u")
        assert usage.requests == 8 and usage.reserved_usd == 0
        assert len(server.chat_requests) == 8
        assert (await guard.ausage_report(["async-u"]))[0].requests == 8
    finally:
        await store.aclose()
        cleanup(store)


# -- the property: the same decisions as the memory store -------------------------------------

SCOPE_SETS = [("u1", "org", "_global"), ("u2", "org", "_global"), ("u1",), ("u2", "org")]
limits_st = st.fixed_dictionaries(
    {
        "daily_nanos": st.one_of(st.none(), st.integers(0, 3000)),
        "monthly_nanos": st.one_of(st.none(), st.integers(0, 9000)),
        "tokens_per_minute": st.one_of(st.none(), st.integers(1, 400)),
        "tokens_per_day": st.one_of(st.none(), st.integers(1, 5000)),
        "max_in_flight": st.one_of(st.none(), st.integers(1, 4)),
    }
)
op_st = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.integers(0, len(SCOPE_SETS) - 1),
        st.integers(0, 1500),
        st.integers(0, 300),
        st.sampled_from([30.0, 120.0, 900.0]),
    ),
    st.tuples(
        st.just("settle"),
        st.integers(0, 50),
        st.integers(0, 2000),
        st.integers(0, 200),
        st.integers(0, 200),
    ),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(
        st.just("advance"),
        st.sampled_from([0.25, 1.7, 13.0, 59.9, 61.0, 3599.5, 43200.0, 20 * 86400.0]),
    ),
    st.tuples(st.just("usage"), st.sampled_from(["u1", "u2", "org", "_global"])),
)
start_st = st.sampled_from(
    [
        datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 23, 58, 30, tzinfo=UTC),  # the month is ending
        datetime(2026, 3, 8, 6, 30, 0, 123456, tzinfo=UTC),  # a DST night in NY
    ]
)


def bucket_state(store: RedisStore, scope: str) -> dict[str, tuple[float, float]]:
    """The raw token buckets of a scope: bit-identical floats in both stores."""
    raw = store.client.hgetall(f"{store.key_prefix(scope)}s")
    names = {b"m": "tokens_per_minute", b"d": "tokens_per_day"}
    return {
        names[field]: (float(value.split()[0]), float(value.split()[1]))
        for field, value in raw.items()
        if field in names
    }


def memory_bucket_state(store: MemoryStore, scope: str) -> dict[str, tuple[float, float]]:
    return {name: state for (sc, name), state in store._s.buckets.items() if sc == scope}


def run_sequence(store_kind: str, tmp_path: Path, data: Any) -> None:
    start = data.draw(start_st)
    tz = data.draw(st.sampled_from(["UTC", "America/New_York"]))
    limits = {s: ScopeLimits(s, **data.draw(limits_st)) for s in ["u1", "u2", "org", "_global"]}
    ops = data.draw(st.lists(op_st, min_size=1, max_size=40))
    clock = ManualClock(start)
    store = make_store(store_kind, clock, tmp_path, timezone=tz)
    twin = Twin(store, MemoryStore(clock=clock, timezone=tz))
    reservations: list[Any] = []
    try:
        for n, op in enumerate(ops):
            if op[0] == "reserve":
                _, which, cost, tokens, ttl = op
                scopes = tuple(limits[s] for s in SCOPE_SETS[which])
                kind, value = twin(
                    "reserve", ReservationRequest(f"r{n}", scopes, cost, tokens, ttl)
                )
                if kind == "ok":
                    reservations.append(value)
            elif op[0] in ("settle", "release") and reservations:
                r = reservations[op[1] % len(reservations)]
                if op[0] == "settle":
                    twin("settle", r, Settlement(op[2], op[3], op[4], "m"))
                else:
                    twin("release", r)
            elif op[0] == "advance":
                # Past the retention the stores differ by design: Redis forgets a month's
                # spend (docs/redis.md), the memory store keeps it. Stay inside it.
                elapsed = (clock.now() - start).total_seconds() + op[1]
                if elapsed <= store.retention_seconds - 86400:
                    clock.advance(op[1])
            elif op[0] == "usage":
                twin("usage", op[1])
            for scope in ("u1", "org"):
                assert bucket_state(store, scope) == memory_bucket_state(twin.ref, scope)
        for scope in limits:
            twin("usage", scope)
            twin("usage", scope, start.date())
            assert bucket_state(store, scope) == memory_bucket_state(twin.ref, scope)
        twin("usage_report", list(limits), start.date(), clock.now().date())
    finally:
        cleanup(store)


@pytest.mark.parametrize("kind", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def test_bucket_levels_are_bit_identical(kind: str, tmp_path: Path) -> None:
    """Fractional refills, refunds and debts: the raw levels are the same doubles."""
    rng = random.Random(7)
    clock = ManualClock(START)
    store = make_store(kind, clock, tmp_path)
    twin = Twin(store, MemoryStore(clock=clock))
    lim = ScopeLimits("bits", tokens_per_minute=977, tokens_per_day=100_003)
    try:
        for n in range(300):
            kind_, r = twin("reserve", req(f"r{n}", lim, tokens=rng.randint(1, 400)))
            if kind_ == "ok" and rng.random() < 0.7:
                used = rng.randint(0, 500)  # sometimes more than reserved: a debt
                twin("settle", r, Settlement(0, used // 2, used - used // 2, "m"))
            elif kind_ == "ok":
                twin("release", r)
            clock.advance(rng.random() * 9)
            assert bucket_state(store, "bits") == memory_bucket_state(twin.ref, "bits")
    finally:
        cleanup(store)


@redis_only
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_same_decisions_as_memory_on_real_redis(tmp_path: Path, data: Any) -> None:
    run_sequence("redis", tmp_path, data)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_same_decisions_as_memory_on_fakeredis(tmp_path: Path, data: Any) -> None:
    run_sequence("fakeredis", tmp_path, data)


def test_unique_prefix_helper_is_unique() -> None:
    assert unique_prefix() != unique_prefix()
    assert REDIS_URL.startswith("redis://")
