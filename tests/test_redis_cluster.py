"""The Redis store against a real Redis Cluster: three private masters (no replicas) started
once for the module, a ``redis.cluster.RedisCluster`` client, and tenants spread over every
node. Only the public store API is used; where the keys of a scope live is read from the
documented rule (every key of a scope carries the hash tag ``{scope}``, or
``{hash_tag(scope)}``) and checked against what each node really holds."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

import guardrail
from guardrail import BudgetExceeded, ConfigurationError, Guard, ManualClock, Policy
from guardrail.stores.base import NANOS_PER_USD, ReservationRequest, ScopeLimits, Settlement
from guardrail.stores.redis import RedisStore
from tests._redis_helpers import HELLO, RedisCluster, unique_prefix

# Marked like every Redis test: under CI a missing Redis fails instead of skipping (the marker
# checks 127.0.0.1:6379; RedisCluster itself fails under CI without redis-server/redis-cli).
pytestmark = pytest.mark.redis

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TENANTS = [f"tenant-{i:02d}" for i in range(24)]
COST = 400
MODEL = "gpt-4o"


# -- the cluster and its clients ----------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def client(cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    made = redis.cluster.RedisCluster(host=cluster.host, port=cluster.ports[0])
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def make_store(client: Any, clock: ManualClock, tmp_path: Path, **options: Any) -> RedisStore:
    spool = tmp_path / f"spool-{uuid.uuid4().hex[:6]}.jsonl"
    return RedisStore(
        client=client, prefix=unique_prefix(), clock=clock, spool_path=spool, **options
    )


def async_cluster_client(cluster: RedisCluster) -> Any:
    return redis.asyncio.cluster.RedisCluster(host=cluster.host, port=cluster.ports[0])


def req(rid: str, *scopes: ScopeLimits, cost: int = 0, tokens: int = 0) -> ReservationRequest:
    return ReservationRequest(rid, scopes, cost, tokens, ttl_seconds=60, model="m")


def usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


# -- where keys live ----------------------------------------------------------------------


def tagged(tag: str) -> str:
    """A key with hash tag ``tag``: in the slot of every key of a scope whose tag it is."""
    return "{" + tag + "}"


@functools.cache
def slot_owners(cluster: RedisCluster) -> dict[int, int]:
    """``{slot: port of the primary that serves it}``, from ``CLUSTER SLOTS`` of every node
    (which must all agree; the module's cluster never changes its slots)."""
    maps = []
    for port in cluster.ports:
        with redis.Redis(host=cluster.host, port=port) as node:
            ranges = node.execute_command("CLUSTER SLOTS")
        maps.append({s: int(r[2][1]) for r in ranges for s in range(int(r[0]), int(r[1]) + 1)})
    assert all(m == maps[0] for m in maps) and len(maps[0]) == 16384
    assert set(maps[0].values()) == set(cluster.ports)
    return maps[0]


def node_of(cluster: RedisCluster, client: Any, tag: str) -> int:
    """The port of the node that owns hash tag ``tag``; asserts that the server's
    ``CLUSTER KEYSLOT`` and the client agree on its slot."""
    slot = client.keyslot(tagged(tag))
    assert client.cluster_keyslot(tagged(tag)) == slot
    return slot_owners(cluster)[slot]


def one_per_node(cluster: RedisCluster, client: Any, names: list[str]) -> list[str]:
    """The first of ``names`` whose tag lands on each node, in port order."""
    owners = slot_owners(cluster)
    picked: dict[int, str] = {}
    for name in names:
        picked.setdefault(owners[client.keyslot(tagged(name))], name)
    assert sorted(picked) == sorted(cluster.ports), "no candidate name for some node"
    return [picked[port] for port in sorted(picked)]


def slots_by_node(cluster: RedisCluster, client: Any, prefix: str) -> dict[int, set[int]]:
    """``{port: slots of the keys under prefix that this node really holds}``, read from
    each node on its own (a plain connection: SCAN of that node only)."""
    out: dict[int, set[int]] = {}
    for port in cluster.ports:
        with redis.Redis(host=cluster.host, port=port) as node:
            keys = list(node.scan_iter(match=f"{prefix}:*", count=1000))
        out[port] = {client.keyslot(key) for key in keys}
    return out


def script_calls(cluster: RedisCluster) -> int:
    """How many EVAL/EVALSHA/SCRIPT commands all nodes have served so far."""
    total = 0
    for port in cluster.ports:
        with redis.Redis(host=cluster.host, port=port) as node:
            stats = node.info("commandstats")
        total += sum(
            int(v["calls"])
            for k, v in stats.items()
            if k.startswith(("cmdstat_eval", "cmdstat_script"))
        )
    return total


def cached_scripts(cluster: RedisCluster) -> list[int]:
    counts = []
    for port in cluster.ports:
        with redis.Redis(host=cluster.host, port=port) as node:
            counts.append(int(node.info("memory")["number_of_cached_scripts"]))
    return counts


def flush_scripts_on_every_node(cluster: RedisCluster) -> None:
    for port in cluster.ports:
        with redis.Redis(host=cluster.host, port=port) as node:
            assert node.script_flush()
    assert cached_scripts(cluster) == [0, 0, 0]


# -- one scope per call: tenants on every node --------------------------------------------


def test_the_cluster_has_three_masters_and_the_tenants_cover_them(
    cluster: RedisCluster, client: Any
) -> None:
    primaries = sorted(node.port for node in client.get_primaries())
    assert primaries == sorted(cluster.ports) and len(primaries) == 3
    assert {node_of(cluster, client, t) for t in TENANTS} == set(cluster.ports)


def exercise_tenant(store: RedisStore, tenant: str, cap: int, index: int) -> None:
    """Reserve until the cap refuses, settle (twice: applied once), release, fill up to the
    cap exactly, get refused for one nano more, settle everything at its held cost."""
    lim = ScopeLimits(tenant, daily_nanos=cap)
    fit = cap // COST
    held = [store.reserve(req(f"{tenant}-{k}", lim, cost=COST)) for k in range(fit)]
    with pytest.raises(BudgetExceeded) as refused:
        store.reserve(req(f"{tenant}-over", lim, cost=COST))  # call fit + 1: refused
    assert (refused.value.tenant, refused.value.limit) == (tenant, "daily_spend_usd")
    assert store.usage(tenant).reserved_usd == usd(fit * COST)
    store.settle(held[0], Settlement(250, 10, index, "gpt-a"))
    store.settle(held[0], Settlement(250, 10, index, "gpt-a"))  # a replay: applied once
    store.release(held[1])
    headroom = cap - 250 - (fit - 2) * COST
    last = store.reserve(req(f"{tenant}-last", lim, cost=headroom))  # up to the cap exactly
    with pytest.raises(BudgetExceeded) as again:
        store.reserve(req(f"{tenant}-one-more", lim, cost=1))
    assert again.value.tenant == tenant
    for r in [*held[2:], last]:
        store.settle(r, Settlement(r.cost_nanos, 1, 1, "gpt-b"))


def test_tenants_on_every_node_have_their_caps_enforced_exactly(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path)
    caps = {t: 1000 + 150 * i for i, t in enumerate(TENANTS)}
    for i, tenant in enumerate(TENANTS):
        exercise_tenant(store, tenant, caps[tenant], i)

    for i, tenant in enumerate(TENANTS):
        fit = caps[tenant] // COST
        u = store.usage(tenant)
        assert u.spent_usd == u.month_spent_usd == usd(caps[tenant])
        assert u.reserved_usd == 0
        assert u.requests == fit  # the first, the fit - 2 others and the last
        assert (u.input_tokens, u.output_tokens) == (10 + fit - 1, i + fit - 1)

    # Every node holds keys of this store, each in the slot of one of its own tenants.
    owners = slot_owners(cluster)
    tenant_slots = {client.keyslot(tagged(t)) for t in TENANTS}
    found = slots_by_node(cluster, client, store.prefix)
    assert all(found[port] for port in cluster.ports), found
    for port, slots in found.items():
        assert slots <= tenant_slots and {owners[s] for s in slots} == {port}
    assert set().union(*found.values()) == tenant_slots

    # scopes=None SCANs: it must reach every node, not only the one a SCAN happens to hit.
    rows = store.usage_report()
    assert {row.scope for row in rows} == set(TENANTS)
    assert {node_of(cluster, client, row.scope) for row in rows} == set(cluster.ports)
    assert rows == store.usage_report(TENANTS)
    for tenant in TENANTS:
        mine = {row.model: row for row in rows if row.scope == tenant}
        assert set(mine) == {"gpt-a", "gpt-b"}
        assert mine["gpt-a"].cost_usd + mine["gpt-b"].cost_usd == usd(caps[tenant])
        assert mine["gpt-a"].requests == 1 and mine["gpt-a"].input_tokens == 10
    store.close()


def test_token_buckets_refill_on_every_node(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path)
    for tenant in one_per_node(cluster, client, TENANTS):
        lim = ScopeLimits(tenant, tokens_per_minute=600)
        store.reserve(req(f"{tenant}-all", lim, tokens=600))
        with pytest.raises(BudgetExceeded) as refused:
            store.reserve(req(f"{tenant}-1", lim, tokens=1))
        assert (refused.value.tenant, refused.value.limit) == (tenant, "tokens_per_minute")
    clock.advance(6)  # 10 tokens a second: 60 back in every bucket
    for tenant in one_per_node(cluster, client, TENANTS):
        lim = ScopeLimits(tenant, tokens_per_minute=600)
        store.reserve(req(f"{tenant}-60", lim, tokens=60))
        with pytest.raises(BudgetExceeded):
            store.reserve(req(f"{tenant}-61", lim, tokens=1))
    store.close()


# -- several scopes per call ----------------------------------------------------------------


ORG_CANDIDATES = [f"org-{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def org_of(scope: str) -> str:
    """Users are ``<user>@<org>``: a user and its organisation share the organisation's tag."""
    return scope.rsplit("@", 1)[-1]


def test_user_and_org_share_a_slot_with_hash_tag(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path, hash_tag=org_of)
    orgs = one_per_node(cluster, client, ORG_CANDIDATES)
    for org in orgs:
        u1, u2 = f"u1@{org}", f"u2@{org}"
        o = ScopeLimits(org, daily_nanos=1000)
        a, b = ScopeLimits(u1, daily_nanos=700), ScopeLimits(u2, daily_nanos=700)
        r1 = store.reserve(req(f"{u1}-1", a, o, cost=600))
        with pytest.raises(BudgetExceeded) as refused:
            store.reserve(req(f"{u2}-1", b, o, cost=600))  # the organisation's cap
        assert refused.value.tenant == org
        with pytest.raises(BudgetExceeded) as refused:
            store.reserve(req(f"{u1}-2", a, o, cost=200))  # the user's own cap
        assert refused.value.tenant == u1
        r2 = store.reserve(req(f"{u2}-2", b, o, cost=400))  # the org's cap exactly
        store.settle(r1, Settlement(500, 3, 4, "m"))
        store.release(r2)
        r3 = store.reserve(req(f"{u2}-3", b, o, cost=500))  # the org's cap exactly again
        store.settle(r3, Settlement(500, 3, 4, "m"))
        with pytest.raises(BudgetExceeded):
            store.reserve(req(f"{u1}-4", a, o, cost=1))
        assert (store.usage(org).spent_usd, store.usage(org).requests) == (usd(1000), 2)
        assert (store.usage(u1).spent_usd, store.usage(u2).spent_usd) == (usd(500), usd(500))
        assert store.usage(org).reserved_usd == 0 == store.usage(u2).reserved_usd

    # All keys of an organisation and its users sit in the organisation's slot, on its node.
    found = slots_by_node(cluster, client, store.prefix)
    assert {port: slots for port, slots in found.items() if slots} == {
        node_of(cluster, client, org): {client.keyslot(tagged(org))} for org in orgs
    }
    rows = store.usage_report()
    assert {row.scope for row in rows} == {
        scope for org in orgs for scope in (org, f"u1@{org}", f"u2@{org}")
    }
    store.close()


def test_scopes_on_different_slots_are_refused_before_redis(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path)  # no hash_tag
    org = "solo"
    users = one_per_node(cluster, client, [f"u{i}@solo" for i in range(100)])
    user = next(u for u in users if node_of(cluster, client, u) != node_of(cluster, client, org))
    before = script_calls(cluster)
    with pytest.raises(ConfigurationError, match="hash tag"):
        store.reserve(req("cross", ScopeLimits(user, daily_nanos=10), ScopeLimits(org), cost=1))
    assert script_calls(cluster) == before  # nothing was sent
    assert not any(slots_by_node(cluster, client, store.prefix).values())
    r = store.reserve(req("alone", ScopeLimits(user, daily_nanos=10), cost=5))  # one scope
    store.settle(r, Settlement(5, 1, 1, "m"))
    assert store.usage(user).spent_usd == usd(5)
    store.close()


# -- a guarded OpenAI call, end to end ----------------------------------------------------


def worst_case() -> Decimal:
    return guardrail.estimate_cost(MODEL, guardrail.count_messages(HELLO, MODEL), 100)


def guarded_openai(
    server: Any, store: RedisStore, org: str, records: list[Any], make: Callable[..., Any]
) -> tuple[Guard, Any]:
    cost = worst_case()
    guard = Guard(
        Policy(daily_spend_usd=cost * 2, loop_limit=None),  # two calls a tenant
        store=store,
        tenant_policies={org: Policy(daily_spend_usd=cost * 3, loop_limit=None)},
        sinks=[records.append],
    )
    return guard, guard.wrap(make(base_url=server.base_url, api_key="t", max_retries=0))


def test_guarded_openai_calls_on_every_node(
    server: Any, cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    server.reply = "word " * 300  # every call uses all 100 of its output tokens
    store = make_store(client, clock, tmp_path, hash_tag=org_of)
    org = one_per_node(cluster, client, ORG_CANDIDATES)[0]
    records: list[Any] = []
    guard, openai_client = guarded_openai(server, store, org, records, openai.OpenAI)
    tenants = one_per_node(cluster, client, TENANTS)
    for tenant in tenants:
        user = openai_client.for_tenant(tenant)
        for _ in range(2):
            user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
        with pytest.raises(BudgetExceeded) as refused:
            user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
        assert refused.value.tenant == tenant
        usage = guard.usage(tenant)
        assert usage.requests == 2 and usage.reserved_usd == 0
        assert usage.spent_usd == sum(r.cost_usd for r in records if r.tenant == tenant)
    # A user and its organisation, charged together in one slot: the org's cap bites first.
    for user in ("u1", "u2"):
        openai_client.for_tenant(f"{user}@{org}", [org]).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )
    openai_client.for_tenant(f"u3@{org}", [org]).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=100
    )
    with pytest.raises(BudgetExceeded) as refused:
        openai_client.for_tenant(f"u1@{org}", [org]).chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=100
        )
    assert refused.value.tenant == org
    assert len(server.chat_requests) == 2 * len(tenants) + 3
    assert guard.usage(org).requests == 3 and guard.usage(org).reserved_usd == 0
    assert {row.scope for row in store.usage_report()} == {
        *tenants,
        org,
        f"u1@{org}",
        f"u2@{org}",
        f"u3@{org}",
    }
    store.close()


# -- async --------------------------------------------------------------------------------


async def exercise_async(
    store: RedisStore, cluster: RedisCluster, client: Any, tag: str = "a"
) -> None:
    tenants = one_per_node(cluster, client, TENANTS)
    for tenant in tenants:
        lim = ScopeLimits(tenant, daily_nanos=1000)
        r1 = await store.areserve(req(f"{tag}-{tenant}-1", lim, cost=600))
        r2 = await store.areserve(req(f"{tag}-{tenant}-2", lim, cost=400))
        with pytest.raises(BudgetExceeded) as refused:
            await store.areserve(req(f"{tag}-{tenant}-3", lim, cost=1))
        assert refused.value.tenant == tenant
        await store.asettle(r1, Settlement(300, 2, 3, "m"))
        await store.arelease(r2)
        u = await store.ausage(tenant)
        assert (u.spent_usd, u.reserved_usd, u.requests) == (usd(300), usd(0), 1)
    rows = await store.ausage_report()  # scopes=None: an async SCAN of every node
    assert {row.scope for row in rows} == set(tenants)


async def test_async_with_an_async_cluster_client(
    server: Any, cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(
        client, clock, tmp_path, hash_tag=org_of, async_client=async_cluster_client(cluster)
    )
    try:
        await exercise_async(store, cluster, client)
        server.reply = "word " * 300
        org = one_per_node(cluster, client, ORG_CANDIDATES)[1]
        records: list[Any] = []
        guard, openai_client = guarded_openai(server, store, org, records, openai.AsyncOpenAI)
        user = openai_client.for_tenant(f"u1@{org}", [org])
        for _ in range(2):
            await user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
        with pytest.raises(BudgetExceeded) as refused:
            await user.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)
        assert refused.value.tenant == f"u1@{org}"
        usage = await guard.ausage(org)
        assert usage.requests == 2 and usage.reserved_usd == 0
        assert usage.spent_usd == sum(r.cost_usd for r in records if r.outcome == "ok")
    finally:
        await store.aclose()
        store.close()


async def test_async_default_client_follows_the_cluster(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path)  # no async_client: the store makes one
    try:
        await exercise_async(store, cluster, client)
        made, _ = store._async()
        assert isinstance(made, redis.asyncio.cluster.RedisCluster)
    finally:
        await store.aclose()
        store.close()


# -- scripts are loaded again after SCRIPT FLUSH ------------------------------------------


def test_scripts_reload_after_script_flush_on_every_node(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path)
    tenants = one_per_node(cluster, client, TENANTS)
    for tenant in tenants:
        lim = ScopeLimits(tenant, daily_nanos=1000)
        store.settle(store.reserve(req(f"{tenant}-1", lim, cost=500)), Settlement(400, 1, 1, "m"))
    assert all(cached_scripts(cluster))
    flush_scripts_on_every_node(cluster)
    for tenant in tenants:  # every script, on every node, after NOSCRIPT
        lim = ScopeLimits(tenant, daily_nanos=1000)
        assert store.usage(tenant).spent_usd == usd(400)
        store.release(store.reserve(req(f"{tenant}-2", lim, cost=600)))
        r = store.reserve(req(f"{tenant}-3", lim, cost=600))
        with pytest.raises(BudgetExceeded):
            store.reserve(req(f"{tenant}-4", lim, cost=1))
        store.settle(r, Settlement(600, 1, 1, "m"))
        u = store.usage(tenant)
        assert (u.spent_usd, u.reserved_usd, u.requests) == (usd(1000), usd(0), 2)
    assert all(cached_scripts(cluster))
    store.close()


async def test_async_scripts_reload_after_script_flush_on_every_node(
    cluster: RedisCluster, client: Any, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store(client, clock, tmp_path, async_client=async_cluster_client(cluster))
    try:
        await exercise_async(store, cluster, client, tag="before")
        flush_scripts_on_every_node(cluster)
        clock.advance(86_400)  # a new day: fresh caps, the same tenants
        await exercise_async(store, cluster, client, tag="after")
        assert all(cached_scripts(cluster))
    finally:
        await store.aclose()
        store.close()


def test_default_spool_is_named_after_the_cluster(cluster: RedisCluster, client: Any) -> None:
    """Two clusters behind one prefix must not share a spool (and replay each other's)."""
    from guardrail.stores.redis.connection import location as _location

    where = _location(client)
    assert where.startswith("cluster:") and "?" not in where
