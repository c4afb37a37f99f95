"""The async driver's settlements: shielded from cancellation in a task of their own,
except on a store whose async writes never suspend (the memory store's), where they run
in the caller's task."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from guardrail import MemoryStore, RedisStore
from guardrail.engine.drivers import _shielded
from guardrail.observe.watch import ObservedStore

NEVER_SUSPENDS = SimpleNamespace(async_writes_never_suspend=True)
MAY_SUSPEND = SimpleNamespace()


async def test_on_a_store_that_never_suspends_the_write_runs_in_the_callers_task() -> None:
    caller = asyncio.current_task()
    ran_in: list[asyncio.Task[object] | None] = []

    async def write() -> str:
        ran_in.append(asyncio.current_task())
        return "settled"

    assert await _shielded(NEVER_SUSPENDS, write()) == "settled"
    assert ran_in == [caller]
    assert await _shielded(MAY_SUSPEND, write()) == "settled"
    assert ran_in[1] is not caller  # shielded: a task of its own


async def test_a_write_that_suspends_finishes_even_when_the_caller_is_cancelled() -> None:
    steps: list[str] = []
    started = asyncio.Event()
    finished = asyncio.Event()

    async def write() -> str:
        steps.append("start")
        started.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        steps.append("end")
        finished.set()
        return "settled"

    task = asyncio.create_task(_shielded(MAY_SUSPEND, write()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(finished.wait(), timeout=5)
    assert steps == ["start", "end"]


async def test_a_write_that_suspends_keeps_its_own_task_from_its_start() -> None:
    # redis-py's timeouts cancel the task a command started in: the write must not move.
    tasks: list[asyncio.Task[object] | None] = []

    async def write() -> None:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())

    await _shielded(MAY_SUSPEND, write())
    assert tasks[0] is tasks[1]


async def test_a_write_that_fails_raises_its_error() -> None:
    async def fails_at_once() -> None:
        raise ConnectionError("down")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("down later")

    for store in (NEVER_SUSPENDS, MAY_SUSPEND):
        with pytest.raises(ConnectionError, match="down"):
            await _shielded(store, fails_at_once())
        with pytest.raises(ConnectionError, match="down later"):
            await _shielded(store, fails_later())


def test_the_memory_store_says_so_and_a_watched_one_passes_it_on() -> None:
    store = MemoryStore()
    assert store.async_writes_never_suspend is True
    assert ObservedStore(store, None, None).async_writes_never_suspend is True
    assert not getattr(RedisStore, "async_writes_never_suspend", False)

    class Remote(MemoryStore):  # overrides a write, which may now suspend
        async def asettle(self, reservation: object, settlement: object) -> str:
            await asyncio.sleep(0)
            return self.settle(reservation, settlement)  # type: ignore[arg-type]

    assert Remote().async_writes_never_suspend is False


async def test_the_async_client_calls_the_memory_stores_sync_methods_directly() -> None:
    # Its async methods only call the sync ones: the driver skips them (a coroutine each).
    from guardrail.engine.drivers import AsyncDriver
    from guardrail.engine.operations import Release, Reserve, Settle
    from guardrail.stores.base import ReservationRequest, ScopeLimits, Settlement

    store = MemoryStore()

    async def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the async method was awaited")

    store.areserve = store.asettle = store.arelease = never  # type: ignore[method-assign]
    request = ReservationRequest(
        id="r1", scopes=(ScopeLimits("t"),), cost_nanos=5, tokens=3, ttl_seconds=60
    )

    def flow():  # type: ignore[no-untyped-def]
        first = yield Reserve(request)
        written = yield Settle(first, Settlement(4, 1, 2, "m"))
        second = yield Reserve(ReservationRequest(**{**vars(request), "id": "r2"}))
        yield Release(second)
        return written

    driver = AsyncDriver(store, None, None)  # type: ignore[arg-type]
    assert await driver.run(flow(), None) == "settled"  # type: ignore[arg-type]
    usage = store.usage("t")
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (1, 1, 2)
    assert usage.reserved_usd == 0  # both holds gone: settled, released

    class Remote(MemoryStore):  # its own async reserve: awaited, not skipped
        awaited = 0

        async def areserve(self, request: ReservationRequest) -> object:  # type: ignore[override]
            Remote.awaited += 1
            return self.reserve(request)

    remote = Remote()
    assert remote.async_writes_never_suspend is False
    await AsyncDriver(remote, None, None).run(flow(), None)  # type: ignore[arg-type]
    assert Remote.awaited == 2
