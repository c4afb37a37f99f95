"""Many processes and threads against one tenant's cap in one Redis: 4 processes x 25
threads, each making guarded calls through the real OpenAI SDK to the fake server."""

from __future__ import annotations

import multiprocessing
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import guardrail
from guardrail.stores.base import usd_to_nanos
from guardrail.stores.redis import RedisStore
from tests._redis_helpers import HELLO, REDIS_URL, START_TS, crowd_worker, unique_prefix

PROCESSES, THREADS, CALLS = 4, 25, 3


@pytest.mark.redis
def test_processes_and_threads_never_overspend_one_cap(server: Any, tmp_path: Any) -> None:
    server.reply = "word " * 300  # every call uses all of its 100 output tokens
    worst = guardrail.estimate_cost("gpt-4o", guardrail.count_messages(HELLO, "gpt-4o"), 100)
    cap = worst * 40 + worst / 3  # 40 calls fit, a 41st does not
    prefix = unique_prefix()
    ctx = multiprocessing.get_context("spawn")
    args = [(REDIS_URL, server.base_url, prefix, str(cap), THREADS, CALLS)] * PROCESSES
    store = RedisStore.from_url(
        REDIS_URL, prefix=prefix, clock=guardrail.ManualClock(START_TS), spool_path=tmp_path / "s"
    )
    try:
        with ctx.Pool(PROCESSES) as pool:
            results = pool.starmap(crowd_worker, args)
        records = [rec for worker in results for rec in worker]
        ok = [rec for rec in records if rec[0] == "ok"]
        assert len(records) == PROCESSES * THREADS * CALLS
        assert len(ok) == 40  # every call costs its worst case: exactly 40 fit
        assert len(server.chat_requests) == len(ok)  # every allowed call, and only those
        usage = store.usage("crowd")
        assert usage.spent_usd <= cap
        assert usage.requests == len(ok) and usage.reserved_usd == 0
        assert usd_to_nanos(usage.spent_usd) == sum(usd_to_nanos(Decimal(r[1])) for r in ok)
        assert len({r[2] for r in ok}) == len(ok)  # one reservation per call
        spooled = list(Path(tempfile.gettempdir()).glob(f"{prefix}-*.jsonl"))
        assert spooled == []  # no worker had to spool anything
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        store.close()
