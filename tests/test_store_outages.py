"""Never drop a settlement (item 3), and never orphan a hold (item 4), against a private
redis-server the test stops, restarts and SIGSTOPs: the spool unwritable (a directory that
cannot be made; a full disk, /dev/full), settlements kept in memory, charged locally and
written once Redis is back; a stalled reserve released by id once Redis answers again.
Waits are ping loops and socket timeouts, never sleeps."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, ManualClock, Policy, StoreUnavailable
from guardrail.stores.base import usd_to_nanos
from guardrail.stores.redis import RedisStore
from tests._redis_helpers import HELLO, START_TS, RedisServer, _pings

MODEL = "gpt-4o"
LONG = "word " * 300  # longer than max_tokens: the answer is cut at the bound


def worst_case() -> Decimal:
    return guardrail.estimate_cost(MODEL, guardrail.count_messages(HELLO, MODEL), 100)


def guarded(
    server: Any, store: RedisStore, policy: Policy, **kw: Any
) -> tuple[Guard, Any, list[Any]]:
    records: list[Any] = []
    guard = Guard(policy, store=store, sinks=[records.append], **kw)
    raw = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    return guard, guard.wrap(raw).for_tenant("acme"), records


def call(client: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)


def unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "full disk":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        return Path("/dev/full")
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the spool's directory should be")
    return blocker / "spool" / "guardrail.jsonl"  # its directory can never be made


@pytest.mark.parametrize("kind", ["directory cannot be made", "full disk"])
def test_a_settlement_written_nowhere_is_kept_charged_and_written_later(
    server: Any, tmp_path: Path, kind: str, caplog: Any
) -> None:
    with RedisServer(tmp_path, durable=True) as redis_server:
        store = RedisStore.from_url(
            redis_server.url, clock=ManualClock(START_TS), spool_path=unwritable(tmp_path, kind)
        )
        cap = worst_case() * 3
        guard, client, records = guarded(
            server, store, Policy(daily_spend_usd=cap, loop_limit=None), on_store_error="fail_open"
        )

        def stop_then_reply(request: Any) -> str:
            redis_server.stop()  # reserved in Redis; the settlement finds it gone
            return LONG

        server.reply = stop_then_reply
        with caplog.at_level(logging.ERROR, logger="guardrail"):
            call(client)  # the caller sees its answer...
        server.reply = LONG  # every call costs its whole worst case
        (first,) = records
        assert first.outcome == "settle_pending" and first.settlement == "pending"
        assert str(first.cost_usd) in caplog.text and "kept in memory" in caplog.text
        assert len(store.recovery.pending) == 1  # ...and the settlement is not lost

        # Redis is still down: fail open, but within what this process knows was spent.
        with pytest.raises(BudgetExceeded):
            for _ in range(10):
                call(client)
        # The cap is 3 worst cases, the first call spent one: two more fit, locally.
        assert len(server.chat_requests) - 1 == 2
        assert all(r.settlement == "pending" for r in records if r.outcome != "rejected")

        redis_server.start()  # the same data: the first reservation's hold is still there
        call(client)  # the store answers: every kept settlement is written first
        assert store.recovery.pending == []
        usage = guard.usage("acme")
        paid = [r for r in records if r.outcome != "rejected"]
        assert usage.requests == len(paid) == len(server.chat_requests)
        assert usage.reserved_usd == 0
        assert usd_to_nanos(usage.spent_usd) == sum(usd_to_nanos(r.cost_usd) for r in paid)
        store.close()


def test_a_stalled_reserve_is_released_by_id_once_redis_answers(
    server: Any, tmp_path: Path
) -> None:
    """A reserve that times out may still run when a SIGSTOPped Redis resumes; with
    max_in_flight=1 its orphaned hold would lock the tenant out for the reservation TTL.
    The store releases it by id before its next script."""
    with RedisServer(tmp_path, durable=False) as redis_server:
        store = RedisStore.from_url(
            redis_server.url,
            clock=ManualClock(START_TS),
            spool_path=tmp_path / "spool.jsonl",
            socket_timeout=0.3,
        )
        guard, client, records = guarded(server, store, Policy(max_in_flight=1, loop_limit=None))
        call(client)
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable) as info:
                call(client)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        message = str(info.value)
        assert f"127.0.0.1:{redis_server.port}" in message and "socket timeout 0.3 s" in message
        assert "nothing was sent" in message and len(server.chat_requests) == 1
        assert records[-1].outcome == "error" and "StoreUnavailable" in records[-1].error
        while not _pings(redis_server.port):  # resumed: it runs the buffered reserve now
            pass
        call(client)  # the orphan is released first, so the one slot is free
        assert len(server.chat_requests) == 2 and store.recovery.unknown == {}
        assert guard.usage("acme").reserved_usd == 0 and guard.usage("acme").requests == 2
        store.close()


def test_breaking_out_of_an_async_stream_and_closing_it_logs_nothing(server: Any) -> None:
    problems: list[dict[str, Any]] = []
    records: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
        guard = Guard(Policy(), sinks=[records.append])
        client = guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="t"))
        stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        async for _ in stream:
            break
        await stream.close()
        for _ in range(20):  # let the loop run the abandoned generator's finaliser
            await asyncio.sleep(0)

    asyncio.run(main())
    assert problems == []
    assert [r.outcome for r in records] == ["stream_closed"]


def test_provider_error_messages_stay_out_of_usage_records(server: Any) -> None:
    records: list[Any] = []
    guard = Guard(Policy(max_attempts=1), sinks=[records.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    server.enqueue_error(
        400, code="bad", type="invalid_request_error", message="echo: SECRET PROMPT"
    )
    with pytest.raises(openai.BadRequestError):
        call(client)
    assert "SECRET" not in records[-1].error
    assert records[-1].error == "BadRequestError (status 400, type invalid_request_error, code bad)"
    verbose = Guard(Policy(max_attempts=1), sinks=[records.append], error_messages=True)
    client = verbose.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    server.enqueue_error(400, message="echo: SECRET PROMPT")
    with pytest.raises(openai.BadRequestError):
        call(client)
    assert "SECRET PROMPT" in records[-1].error
