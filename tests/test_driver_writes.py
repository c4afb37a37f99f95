"""The async driver's settlements: shielded from cancellation when they suspend, and run
without a task of their own when they do not (the memory store's)."""

from __future__ import annotations

import asyncio

import pytest

from guardrail.engine.drivers import _shielded


async def test_a_write_that_never_suspends_runs_in_the_callers_task() -> None:
    caller = asyncio.current_task()
    ran_in: list[asyncio.Task[object] | None] = []

    async def write() -> str:
        ran_in.append(asyncio.current_task())
        return "settled"

    assert await _shielded(write()) == "settled"
    assert ran_in == [caller]


async def test_a_write_that_suspends_finishes_even_when_the_caller_is_cancelled() -> None:
    steps: list[str] = []
    started = asyncio.Event()

    async def write() -> str:
        steps.append("start")
        started.set()
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # a bare yield, as well as a future
        steps.append("end")
        return "settled"

    task = asyncio.create_task(_shielded(write()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert steps == ["start", "end"]


async def test_a_write_that_fails_raises_its_error_before_or_after_suspending() -> None:
    async def fails_at_once() -> None:
        raise ConnectionError("down")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("down later")

    with pytest.raises(ConnectionError, match="down"):
        await _shielded(fails_at_once())
    with pytest.raises(ConnectionError, match="down later"):
        await _shielded(fails_later())
