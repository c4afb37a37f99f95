"""A call in flight keeps its hold: while its request waits for the provider, and while its
stream is open (chunks or not), the keeper (guardrail.engine.keeper) renews the hold half a
TTL before it would expire, until the call settles. A hold expires by itself only so that
a crashed process gives its room back; a live call losing it would let other calls of its
tenant spend that room, and pass the cap.

Time is the stores' (a ManualClock); the tests run the keeper's due renewals themselves
(``renew_due``) instead of waiting for its timer (tests/test_hold_keeper.py checks that)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

import guardrail
from guardrail import BudgetExceeded, Guard, ManualClock, MemoryStore, Policy
from guardrail.engine.keeper import async_keeper, async_keepers, sync_keeper
from guardrail.testing import FakeOpenAIServer, HoldScript
from tests._gateway import TENANT_KEY, UPSTREAM_KEY, config_for, running
from tests._redis_helpers import KINDS, cleanup, make_store
from tests._sdk_http import cut_stream_errors

MODEL = "gpt-4o"
MSG = [{"role": "user", "content": "Write a long essay."}]
LONG = "lorem ipsum dolor sit amet " * 60
TTL = 60
START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply=LONG) as fake:
        yield fake


@pytest.fixture
def holds(server: FakeOpenAIServer) -> Iterator[Callable[..., HoldScript]]:
    """Holds the next request's answer (released at the end of the test, however it ends)."""
    made: list[HoldScript] = []

    def hold(after_chunks: int = 0) -> HoldScript:
        made.append(server.enqueue_hold(after_chunks))
        return made[-1]

    yield hold
    for script in made:
        script.release()
    server.reset()


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    made = make_store(str(request.param), ManualClock(START), tmp_path)
    try:
        yield made
    finally:
        cleanup(made)


def _guard(store: Any, **policy: Any) -> tuple[Guard, Decimal]:
    """A guard whose cap fits one call, not two; holds live TTL seconds."""
    one = guardrail.estimate_cost(MODEL, guardrail.count_messages(MSG, MODEL), 100)
    options: dict[str, Any] = {"reservation_ttl_seconds": TTL, "loop_limit": None, **policy}
    return Guard(Policy(daily_spend_usd=one * Decimal("1.5"), **options), store=store), one


def _client(guard: Guard, server: FakeOpenAIServer, kind: Any = openai.OpenAI) -> Any:
    return guard.wrap(kind(base_url=server.base_url, api_key="t", max_retries=0, timeout=30))


def _create(client: Any, **extra: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=100, **extra)


def _held_past_ttls(guard: Guard, one: Decimal, clock: ManualClock, client: Any) -> None:
    """Move the store's clock 124 s (four half-TTLs and more) while a call is in flight,
    renewing what is due at each step: the call's room stays held, a second call is refused."""
    for _ in range(4):
        clock.advance(31)
        sync_keeper().renew_due()
        assert guard.usage("default").reserved_usd == one
        with pytest.raises(BudgetExceeded):  # its room is still held
            _create(client)


def _settled(guard: Guard, one: Decimal, store: Any) -> None:
    usage = guard.usage("default")
    assert usage.reserved_usd == 0 and 0 < usage.spent_usd <= one
    assert sync_keeper().tracked(store) == 0


# -- a request waiting past its TTL --------------------------------------------------------


def test_a_request_waiting_past_its_ttl_keeps_its_hold(server, store, holds) -> None:
    guard, one = _guard(store)
    client = _client(guard, server)
    hold = holds()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_create, client)
        hold.wait_held()
        assert sync_keeper().tracked(store) == 1
        _held_past_ttls(guard, one, store._clock, client)
        hold.release()
        assert first.result(timeout=30).choices[0].message.content
    _settled(guard, one, store)


def test_an_async_request_waiting_past_its_ttl_keeps_its_hold(server, store, holds) -> None:
    guard, one = _guard(store)
    client = _client(guard, server, openai.AsyncOpenAI)
    hold = holds()

    async def main() -> None:
        first = asyncio.create_task(_create(client))
        await asyncio.to_thread(hold.wait_held)
        keeper = async_keeper()
        assert keeper.tracked(store) == 1
        for _ in range(4):
            store._clock.advance(31)
            await keeper.renew_due()
            assert (await guard.ausage("default")).reserved_usd == one
            with pytest.raises(BudgetExceeded):
                await _create(client)
        hold.release()
        assert (await first).choices[0].message.content
        assert keeper.tracked(store) == 0

    asyncio.run(main())
    usage = guard.usage("default")
    assert usage.reserved_usd == 0 and 0 < usage.spent_usd <= one


# -- streams -------------------------------------------------------------------------------


def test_a_silent_stream_keeps_its_hold(server, store, holds) -> None:
    # The provider sends one chunk, then nothing for longer than a TTL, while the caller
    # waits in the stream's next().
    guard, one = _guard(store)
    client = _client(guard, server)
    hold = holds(after_chunks=1)
    stream = _create(client, stream=True)
    chunks = iter(stream)
    next(chunks)
    with ThreadPoolExecutor(1) as pool:
        rest = pool.submit(lambda: sum(1 for _ in chunks))
        hold.wait_held()
        assert sync_keeper().tracked(store) == 1
        _held_past_ttls(guard, one, store._clock, client)
        hold.release()
        assert rest.result(timeout=30) > 0
    _settled(guard, one, store)


def test_a_silent_async_stream_keeps_its_hold(server, store, holds) -> None:
    guard, one = _guard(store)
    client = _client(guard, server, openai.AsyncOpenAI)
    hold = holds(after_chunks=1)

    async def main() -> None:
        stream = await _create(client, stream=True)
        seen = [0]

        async def read() -> None:
            async for _ in stream:
                seen[0] += 1

        reader = asyncio.create_task(read())
        await asyncio.to_thread(hold.wait_held)
        keeper = async_keeper()
        for _ in range(4):
            store._clock.advance(31)
            await keeper.renew_due()
            assert (await guard.ausage("default")).reserved_usd == one
            with pytest.raises(BudgetExceeded):
                await _create(client)
        hold.release()
        await reader
        assert seen[0] > 1 and keeper.tracked(store) == 0

    asyncio.run(main())
    assert guard.usage("default").reserved_usd == 0


def test_a_long_stream_keeps_its_hold(server, store) -> None:
    guard, one = _guard(store)
    client = _client(guard, server)
    chunks = iter(_create(client, stream=True))
    for _ in range(5):  # 200 s of a stream whose hold lives 60 s, a chunk every 40 s
        next(chunks)
        store._clock.advance(40)
        sync_keeper().renew_due()
        assert guard.usage("default").reserved_usd == one
        with pytest.raises(BudgetExceeded):
            _create(client)
    for _ in chunks:
        pass
    _settled(guard, one, store)


# -- renewals that fail --------------------------------------------------------------------


class _FailingStore(MemoryStore):
    """A memory store whose first ``fails`` renewals raise (a store that is down)."""

    def __init__(self, fails: int, suspends: bool = False) -> None:
        super().__init__(clock=ManualClock(START))
        self.fails, self.tries = fails, 0
        if suspends:  # renewed with aextend, in the keeper's task
            self.async_writes_never_suspend = False

    def extend(self, reservation: Any, ttl_seconds: float) -> Any:
        self.tries += 1
        if self.tries <= self.fails:
            raise ConnectionError("the store is down")
        return super().extend(reservation, ttl_seconds)

    async def aextend(self, reservation: Any, ttl_seconds: float) -> Any:
        await asyncio.sleep(0)
        return self.extend(reservation, ttl_seconds)


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not renew" in r.getMessage()]


def test_a_failed_renewal_is_logged_and_tried_again(server, holds, caplog) -> None:
    store = _FailingStore(fails=1)
    guard, one = _guard(store)
    client = _client(guard, server)
    hold = holds()
    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.ERROR, "guardrail"):
        first = pool.submit(_create, client)
        hold.wait_held()
        store._clock.advance(31)
        sync_keeper().renew_due()  # fails: tried again halfway to the expiry (45.5 s)
        assert len(_failures(caplog)) == 1 and store.tries == 1
        store._clock.advance(15)
        sync_keeper().renew_due()
        assert store.tries == 2
        store._clock.advance(40)  # 86 s: past the first expiry, not the renewed one
        assert guard.usage("default").reserved_usd == one
        hold.release()
        first.result(timeout=30)
    _settled(guard, one, store)


@pytest.mark.parametrize("suspends", [False, True], ids=["inline", "task"])
def test_an_async_renewal_that_keeps_failing_never_fails_the_call(
    server, holds, caplog, suspends: bool
) -> None:
    store = _FailingStore(fails=10**6, suspends=suspends)
    guard, one = _guard(store)
    client = _client(guard, server, openai.AsyncOpenAI)
    hold = holds()

    async def main() -> None:
        first = asyncio.create_task(_create(client))
        await asyncio.to_thread(hold.wait_held)
        keeper = async_keeper()
        for step in (31, 15, 8, 4, 2, 1):  # each retry halfway to the expiry, then given up
            store._clock.advance(step)
            await keeper.renew_due()
        assert keeper.tracked(store) == 0  # given up: nothing left to keep
        hold.release()
        assert (await first).choices[0].message.content

    with caplog.at_level(logging.ERROR, "guardrail"):
        asyncio.run(main())
    assert len(_failures(caplog)) == store.tries >= 3
    usage = guard.usage("default")  # settled late, in full
    assert usage.reserved_usd == 0 and 0 < usage.spent_usd <= one


def test_a_hold_gone_already_is_logged_and_no_longer_kept(server, holds, caplog) -> None:
    store = MemoryStore(clock=ManualClock(START))
    guard, one = _guard(store)
    client = _client(guard, server)
    hold = holds()
    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.WARNING, "guardrail"):
        first = pool.submit(_create, client)
        hold.wait_held()
        store._clock.advance(TTL + 1)  # nothing renewed it in time (a process asleep)
        sync_keeper().renew_due()
        assert any("could not be renewed" in r.getMessage() for r in caplog.records)
        assert sync_keeper().tracked(store) == 0
        hold.release()
        first.result(timeout=30)
    assert guard.usage("default").spent_usd > 0  # its late settlement is charged in full


class _Hanging(MemoryStore):
    """A store whose renewal awaits until cancelled (a Redis round trip that never ends)."""

    def __init__(self) -> None:
        super().__init__(clock=ManualClock(START))
        self.async_writes_never_suspend = False
        self.extending = asyncio.Event()

    async def aextend(self, reservation: Any, ttl_seconds: float) -> Any:
        self.extending.set()
        await asyncio.Event().wait()  # until cancelled
        return self.extend(reservation, ttl_seconds)  # pragma: no cover


def test_a_call_cancelled_while_its_hold_is_renewed_still_settles(server, holds) -> None:
    # The renewal runs in the keeper's task, not the caller's: cancelling the caller does
    # not cut it, and the stream settles as any cancelled stream does.
    store = _Hanging()
    guard, _ = _guard(store)
    client = _client(guard, server, openai.AsyncOpenAI)
    hold = holds(after_chunks=1)

    async def consume() -> None:
        async for _ in await _create(client, stream=True):
            pass

    async def main() -> None:
        task = asyncio.create_task(consume())
        await asyncio.to_thread(hold.wait_held)
        store._clock.advance(31)
        renewal = asyncio.create_task(async_keeper().renew_due())
        await store.extending.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert async_keeper().tracked(store) == 0
        renewal.cancel()

    asyncio.run(main())
    usage = guard.usage("default")
    assert usage.reserved_usd == 0 and usage.spent_usd > 0


# -- nothing is kept once a call ends ------------------------------------------------------


def _ends(server: FakeOpenAIServer, client: Any, how: str) -> None:
    if how == "answered":
        _create(client)
    elif how == "http_error":
        server.enqueue_error(400)
        with pytest.raises(openai.BadRequestError):
            _create(client)
    elif how == "retried":
        server.enqueue_error(500)
        _create(client)
    elif how == "timed_out":
        server.enqueue_delay(5)
        with pytest.raises(openai.APITimeoutError):
            _create(client, timeout=0.2)
    elif how == "stream_read":
        for _ in _create(client, stream=True):
            pass
    elif how == "stream_broken_out_of":
        for _ in _create(client, stream=True):
            break
    elif how == "stream_closed":
        with _create(client, stream=True) as stream:
            next(stream)
    elif how == "stream_cut":
        server.enqueue_stream_cut(3)
        with pytest.raises(cut_stream_errors(openai)):
            for _ in _create(client, stream=True):
                pass
    elif how == "stream_dropped":
        import gc

        stream = _create(client, stream=True)
        next(stream)
        del stream
        gc.collect()


@pytest.mark.parametrize(
    "how",
    [
        "answered",
        "http_error",
        "retried",
        "timed_out",
        "stream_read",
        "stream_broken_out_of",
        "stream_closed",
        "stream_cut",
        "stream_dropped",
    ],
)
def test_no_hold_is_kept_after_a_call_ends(server, how: str) -> None:
    store = MemoryStore(clock=ManualClock(START))
    guard, _ = _guard(store, max_attempts=2 if how == "retried" else 1)
    guard.sleep = lambda seconds: None
    client = _client(guard, server)
    _ends(server, client, how)
    assert sync_keeper().tracked(store) == 0
    assert guard.usage("default").reserved_usd == 0
    server.reset()


async def _aends(server: FakeOpenAIServer, client: Any, how: str, hold: Any) -> None:
    if how == "answered":
        await _create(client)
    elif how == "http_error":
        server.enqueue_error(500)
        with pytest.raises(openai.InternalServerError):
            await _create(client)
    elif how == "cancelled":
        task = asyncio.create_task(_create(client))
        await asyncio.to_thread(hold().wait_held)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif how == "stream_read":
        async for _ in await _create(client, stream=True):
            pass
    elif how == "stream_cancelled":
        script = hold(after_chunks=2)

        async def read() -> None:
            async for _ in await _create(client, stream=True):
                pass

        task = asyncio.create_task(read())
        await asyncio.to_thread(script.wait_held)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif how == "stream_closed":
        stream = await _create(client, stream=True)
        await stream.__anext__()
        await stream.close()
    elif how == "stream_cut":
        server.enqueue_stream_cut(3)
        with pytest.raises(cut_stream_errors(openai)):
            async for _ in await _create(client, stream=True):
                pass


@pytest.mark.parametrize(
    "how",
    [
        "answered",
        "http_error",
        "cancelled",
        "stream_read",
        "stream_cancelled",
        "stream_closed",
        "stream_cut",
    ],
)
def test_no_hold_is_kept_after_an_async_call_ends(server, holds, how: str) -> None:
    store = MemoryStore(clock=ManualClock(START))
    guard, _ = _guard(store, max_attempts=1)
    client = _client(guard, server, openai.AsyncOpenAI)

    async def main() -> None:
        await _aends(server, client, how, holds)
        assert async_keeper().tracked(store) == 0

    asyncio.run(main())
    assert guard.usage("default").reserved_usd == 0


def test_a_refused_call_keeps_nothing(server) -> None:
    store = MemoryStore(clock=ManualClock(START))
    guard = Guard(Policy(daily_spend_usd=Decimal("0.000001")), store=store)
    with pytest.raises(BudgetExceeded):
        _create(_client(guard, server))
    assert sync_keeper().tracked(store) == 0


# -- the gateway ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["request", "stream"])
def test_the_gateway_keeps_the_hold_of_a_call_in_flight(
    server, holds, monkeypatch, stream: bool
) -> None:
    monkeypatch.setenv("GR_TEST_OPENAI_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ADMIN_KEY", "sk-admin-secret")
    store = MemoryStore(clock=ManualClock(START))
    one = guardrail.estimate_cost(MODEL, guardrail.count_messages(MSG, MODEL), 100)
    policy = {"daily_spend_usd": str(one * Decimal("1.5")), "reservation_ttl_seconds": TTL}
    # Holds live 60 s; the upstream's timeout is 600 s: a call may wait ten TTLs.
    config = config_for(server.base_url, policy={**policy, "loop_limit": None})
    hold = holds(after_chunks=1 if stream else 0)
    with running(config, store=store) as (base, app):
        watched = app.state.guard.store  # the store, watched for the gateway's metrics
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=TENANT_KEY, max_retries=0)

        def call() -> int:
            if not stream:
                return len(_create(client).choices)
            return sum(1 for _ in _create(client, stream=True))

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(call)
            hold.wait_held()
            (keeper,) = [k for k in async_keepers() if k.tracked(watched)]
            held = store.usage("team-a").reserved_usd
            assert held > 0
            for _ in range(4):
                store._clock.advance(31)
                asyncio.run_coroutine_threadsafe(keeper.renew_due(), keeper.loop).result(10)
                assert store.usage("team-a").reserved_usd == held
                with pytest.raises(openai.RateLimitError):  # the gateway's 429: over budget
                    _create(client)
            hold.release()
            assert first.result(timeout=30) > 0
        assert keeper.tracked(watched) == 0
    usage = store.usage("team-a")
    assert usage.reserved_usd == 0 and usage.spent_usd > 0


# -- the warning at wrap time --------------------------------------------------------------


class _NoRenewal(MemoryStore):
    """A store that cannot renew holds (a custom store without ``extend``)."""

    extend = None  # type: ignore[assignment]
    aextend = None  # type: ignore[assignment]


def test_only_a_store_that_cannot_renew_holds_warns_of_long_waits() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # holds are renewed: any wait is fine
        Guard(Policy(reservation_ttl_seconds=60)).wrap(openai.OpenAI(api_key="t", timeout=3600))
    guard = Guard(Policy(reservation_ttl_seconds=900), store=_NoRenewal())
    with pytest.warns(UserWarning, match="reservation_ttl_seconds"):
        guard.wrap(openai.OpenAI(api_key="t", timeout=3600))
