"""The keepers themselves (guardrail.engine.keeper): their real timers fire, their thread is a
daemon that ends once nothing is tracked, they wake sooner for a shorter TTL, they keep
nothing that is not a hold, and a forked child keeps none of its parent's holds.
tests/test_hold_renewal.py checks what they do for calls."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from guardrail import ManualClock, MemoryStore
from guardrail.engine.keeper import AsyncKeeper, SyncKeeper, sync_keeper
from guardrail.stores.base import Reservation, ReservationRequest, ScopeLimits

ROOT = Path(__file__).resolve().parent.parent


class _Watched(MemoryStore):
    """A memory store that says when a hold is renewed."""

    def __init__(self, clock: Any = None) -> None:
        super().__init__(**({"clock": clock} if clock is not None else {}))
        self.renewed = threading.Event()
        self.renewals = 0

    def extend(self, reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        renewed = super().extend(reservation, ttl_seconds)
        self.renewals += 1
        self.renewed.set()
        return renewed


def _hold(store: MemoryStore, ttl: float, rid: str = "r1") -> Reservation:
    return store.reserve(ReservationRequest(rid, (ScopeLimits("t"),), 1_000, 10, ttl))


def test_the_thread_renews_on_time_is_a_daemon_and_ends_when_nothing_is_kept() -> None:
    keeper = SyncKeeper()
    store = _Watched()  # the system clock: the keeper's real timer
    kept = keeper.track(store, _hold(store, 0.4), 0.4)
    assert kept is not None
    thread = keeper.thread
    assert thread is not None and thread.daemon and thread.is_alive()
    assert store.renewed.wait(10)  # 0.2 s in, half its TTL
    assert keeper.tracked(store) == 1
    kept.drop()
    thread.join(10)  # nothing kept for a whole wait: the thread ends
    assert not thread.is_alive() and keeper.thread is None and keeper.tracked() == 0
    again = keeper.track(store, _hold(store, 60, "r2"), 60)  # a new call: a new thread
    assert again is not None and keeper.thread is not None and keeper.thread.is_alive()
    again.drop()


def test_a_shorter_ttl_wakes_the_thread_sooner() -> None:
    keeper = SyncKeeper()
    slow = MemoryStore(clock=ManualClock(datetime(2026, 3, 10, tzinfo=UTC)))
    long = keeper.track(slow, _hold(slow, 900), 900)  # the thread sleeps 450 s
    fast = _Watched()
    short = keeper.track(fast, _hold(fast, 0.4), 0.4)  # due in 0.2 s: it must wake for it
    assert fast.renewed.wait(10)
    assert long is not None and short is not None
    long.drop()
    short.drop()


def test_the_async_timer_renews_on_time_and_idles_when_nothing_is_kept() -> None:
    async def main() -> None:
        keeper = AsyncKeeper(asyncio.get_running_loop())
        store = _Watched()
        kept = keeper.track(store, _hold(store, 0.4), 0.4)
        assert kept is not None and keeper.wakes_in is not None
        assert await asyncio.to_thread(store.renewed.wait, 10)
        kept.drop()
        keeper._fire()  # nothing tracked since the renewal planned this wait: no timer
        assert keeper.wakes_in is None and keeper.tracked() == 0
        brief = keeper.track(store, _hold(store, 0.4, "r2"), 0.4)  # a timer again
        assert brief is not None and keeper.wakes_in is not None
        brief.drop()
        keeper._fire()  # nothing kept, but a call was tracked during the wait: one more
        assert keeper.wakes_in is not None
        keeper._fire()
        assert keeper.wakes_in is None

    asyncio.run(main())


def test_the_async_timer_is_set_for_the_soonest_renewal() -> None:
    async def main() -> None:
        keeper = AsyncKeeper(asyncio.get_running_loop())
        store = MemoryStore(clock=ManualClock(datetime(2026, 3, 10, tzinfo=UTC)))
        long = keeper.track(store, _hold(store, 900), 900)
        assert 440 < (keeper.wakes_in or 0) <= 450
        short = keeper.track(store, _hold(store, 60, "r2"), 60)
        assert 20 < (keeper.wakes_in or 0) <= 30
        later = keeper.track(store, _hold(store, 900, "r3"), 900)  # no sooner: timer as is
        assert 20 < (keeper.wakes_in or 0) <= 30
        for kept in (long, short, later):
            assert kept is not None
            kept.drop()

    asyncio.run(main())


def test_a_call_shorter_than_half_its_ttl_is_never_renewed() -> None:
    keeper = SyncKeeper()
    clock = ManualClock(datetime(2026, 3, 10, tzinfo=UTC))
    store = _Watched(clock)
    kept = keeper.track(store, _hold(store, 60), 60)
    clock.advance(29)
    assert keeper.renew_due() == 0
    assert kept is not None
    kept.drop()
    clock.advance(60)
    assert keeper.renew_due() == 0 and store.renewals == 0


def test_only_a_hold_a_store_can_renew_is_kept() -> None:
    keeper = SyncKeeper()
    store = MemoryStore()
    assert keeper.track(store, None, 60) is None  # nothing held (no money or token limit)
    made = _hold(store, 60)
    unheld = Reservation(made.id, made.scopes, 0, 0, made.day, made.month, 5.0, 5.0)
    assert keeper.track(store, unheld, 60) is None  # let through unheld (fail-open)

    class NoExtend(MemoryStore):
        extend = None  # type: ignore[assignment]

    assert keeper.track(NoExtend(), made, 60) is None
    assert keeper.tracked() == 0 and keeper.thread is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
# The fork is the point: the keeper's own thread runs (3.12+ warns of fork with threads;
# the child only reads the keeper and exits).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_keeps_none_of_its_parents_holds() -> None:
    store = MemoryStore(clock=ManualClock(datetime(2026, 3, 10, tzinfo=UTC)))
    kept = sync_keeper().track(store, _hold(store, 60), 60)
    assert kept is not None and sync_keeper().tracked(store) == 1
    try:
        pid = os.fork()
        if pid == 0:  # the child: the parent's calls are not its own, nor its thread
            child = sync_keeper()
            os._exit(0 if child.tracked() == 0 and child.thread is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sync_keeper().tracked(store) == 1
    finally:
        kept.drop()


def test_the_keeper_never_keeps_a_process_alive() -> None:
    script = (
        "from guardrail import MemoryStore\n"
        "from guardrail.engine.keeper import sync_keeper\n"
        "from guardrail.stores.base import ReservationRequest, ScopeLimits\n"
        "store = MemoryStore()\n"
        "hold = store.reserve(ReservationRequest('r', (ScopeLimits('t'),), 1, 1, 900.0))\n"
        "kept = sync_keeper().track(store, hold, 900.0)\n"
        "assert sync_keeper().thread.is_alive()\n"
        "print('tracked', sync_keeper().tracked())\n"  # and exits with the hold still kept
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tracked 1"


def test_a_live_call_is_renewed_by_the_real_timer() -> None:
    import openai

    from guardrail import Guard, Policy
    from guardrail.testing import FakeOpenAIServer

    store = _Watched()  # the system clock; holds live 0.4 s
    guard = Guard(Policy(daily_spend_usd=1, reservation_ttl_seconds=0.4), store=store)
    with FakeOpenAIServer() as server:
        hold = server.enqueue_hold()
        client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
        done = threading.Thread(
            target=client.chat.completions.create,
            kwargs={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
        done.start()
        try:
            hold.wait_held()
            assert store.renewed.wait(10)  # the keeper's thread renewed it, on its own
        finally:
            hold.release()
            done.join(30)
    assert sync_keeper().tracked(store) == 0 and guard.usage("default").reserved_usd == 0
