"""Faults, each against a private redis-server the test starts, stops and restarts (or a
worker process it kills): fail closed, fail open, the spool, restarts, dead workers.
Time moves with injected clocks; waits are ping loops and process joins, never sleeps."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

import guardrail
from guardrail import Guard, ManualClock, Policy, StoreUnavailable
from guardrail.stores.base import usd_to_nanos
from guardrail.stores.redis import RedisStore
from guardrail.testing import DEFAULT_REPLY
from tests._redis_helpers import (
    HELLO,
    REDIS_URL,
    START_TS,
    RedisServer,
    cleanup,
    doomed_worker,
    unique_prefix,
)

MODEL = "gpt-4o"


def worst_case() -> Decimal:
    return guardrail.estimate_cost(MODEL, guardrail.count_messages(HELLO, MODEL), 100)


def setup(server: Any, url: str, tmp_path: Path, **guard_kw: Any) -> tuple[Any, Any, list[Any]]:
    store = RedisStore.from_url(url, clock=ManualClock(START_TS), spool_path=tmp_path / "spool")
    records: list[Any] = []
    guard = Guard(
        Policy(daily_spend_usd=worst_case() * 100, loop_limit=None),
        store=store,
        sinks=[records.append],
        **guard_kw,
    )
    raw = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    return guard, guard.wrap(raw).for_tenant("acme"), records


def call(client: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)


def spent_nanos(records: list[Any]) -> int:
    return sum(usd_to_nanos(r.cost_usd) for r in records if r.outcome == "ok")


def test_redis_down_fails_closed_and_sends_nothing(server: Any, tmp_path: Path) -> None:
    with RedisServer(tmp_path, durable=False) as redis_server:
        guard, client, records = setup(server, redis_server.url, tmp_path)
        call(client)
        redis_server.stop()
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as info:
                call(client)
            assert info.value.tenant == "acme"
        assert time.monotonic() - started < 5  # a dead Redis fails calls fast
        assert len(server.chat_requests) == 1  # nothing was sent while Redis was down
        redis_server.start()  # empty (no persistence): the store reconnects by itself
        call(client)
        assert guard.usage("acme").requests == 1 and len(server.chat_requests) == 2


def test_stopped_mid_call_then_restarted(server: Any, tmp_path: Path) -> None:
    """Redis stops between reserve and settle (fail open): the settlement is spooled; later
    calls go through and their usage is spooled too; after a restart the scripts are
    reloaded, the spool is replayed once and the totals are exact."""
    with RedisServer(tmp_path, durable=True) as redis_server:
        guard, client, records = setup(
            server, redis_server.url, tmp_path, on_store_error="fail_open"
        )
        store: RedisStore = guard.store  # type: ignore[assignment]
        call(client)

        def stop_then_reply(request: Any) -> str:
            redis_server.stop()  # the call has reserved; it settles after this returns
            return DEFAULT_REPLY

        server.reply = stop_then_reply
        call(client)  # settles into the spool: the caller sees nothing
        server.reply = DEFAULT_REPLY
        (spooled,) = store.spool.records()
        assert spooled["op"] == "settle" and spooled["r"]["id"] == records[-1].reservation_id
        call(client)  # Redis is down: fail open lets it through, and spools its usage
        assert len(server.chat_requests) == 3
        assert [r["r"]["id"] for r in store.spool.records()] == [
            rec.reservation_id for rec in records[1:]
        ]

        redis_server.start()  # the same data (append-only file), but no scripts loaded
        assert store.client.script_exists(store._scripts["reserve"].sha) == [False]
        call(client)  # NOSCRIPT -> reloaded; the spool is replayed after it answers
        assert store.spool.records() == []
        usage = guard.usage("acme")
        assert usage.requests == len(records) == len(server.chat_requests) == 4
        assert usage.reserved_usd == 0
        assert usd_to_nanos(usage.spent_usd) == spent_nanos(records)

        # A replay of a settlement already applied (the process died before marking it
        # done) changes nothing.
        store.spool.append(spooled)
        assert store.replay_spool() == 1
        assert guard.usage("acme") == usage
        store.close()


def test_explicit_replay_after_restart_without_persistence(server: Any, tmp_path: Path) -> None:
    with RedisServer(tmp_path, durable=False) as redis_server:
        guard, client, records = setup(server, redis_server.url, tmp_path)
        store: RedisStore = guard.store  # type: ignore[assignment]

        def stop_then_reply(request: Any) -> str:
            redis_server.stop()
            return DEFAULT_REPLY

        server.reply = stop_then_reply
        call(client)
        with pytest.raises(redis.exceptions.ConnectionError):
            store.replay_spool()  # still down: kept for later
        assert len(store.spool.records()) == 1
        redis_server.start()  # empty: the spool is all that is left of the call
        assert store.replay_spool() == 1
        assert store.replay_spool() == 0
        usage = guard.usage("acme")
        assert usage.requests == 1 and usd_to_nanos(usage.spent_usd) == spent_nanos(records)
        store.close()


def wait_until_dead(pid: int) -> None:
    """Until the process is a zombie or gone: a poll of /proc, not a sleep for a race."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not die")


@pytest.mark.redis
def test_worker_killed_between_reserve_and_settle(server: Any, tmp_path: Path) -> None:
    prefix = unique_prefix()
    cap = worst_case() * Decimal("1.5")  # room for one call in flight, not two
    ctx = multiprocessing.get_context("spawn")
    worker = ctx.Process(target=doomed_worker, args=(REDIS_URL, server.base_url, prefix, str(cap)))
    clock = ManualClock(START_TS)
    store = RedisStore.from_url(REDIS_URL, prefix=prefix, clock=clock, spool_path=tmp_path / "s")
    try:

        def kill_the_caller(request: Any) -> str:
            assert store.usage("doomed").reserved_usd > 0  # it has reserved...
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)  # ...and dies before it can settle
            wait_until_dead(worker.pid)  # (the main thread reaps it)
            return DEFAULT_REPLY

        server.reply = kill_the_caller
        worker.start()
        worker.join(60)
        assert worker.exitcode == -signal.SIGKILL
        assert len(server.chat_requests) == 1
        server.reply = DEFAULT_REPLY

        guard = Guard(Policy(daily_spend_usd=cap, loop_limit=None), store=store)
        client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
        with pytest.raises(guardrail.BudgetExceeded):  # the dead worker's hold is still there
            call(client.for_tenant("doomed"))
        clock.advance(Policy().reservation_ttl_seconds)  # its reservation expires by itself
        assert guard.usage("doomed").reserved_usd == 0
        call(client.for_tenant("doomed"))
        assert guard.usage("doomed").requests == 1
    finally:
        if worker.is_alive():
            worker.kill()
        cleanup(store)
