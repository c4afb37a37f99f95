"""Drivers: perform the I/O operations the engine's flow yields, sync or async.

These are the only places where sync and async differ, and they hold no decisions:
each operation is executed and its result (or exception) is sent back into the flow.
A stream parks the flow; the guarded stream resumes it when the stream ends, however
it ends (exhausted, closed, broken out of, errored, cancelled). While a call is in flight
(its ``Send`` or ``CountTokens`` awaited, its stream open) a keeper
(:mod:`guardrail.engine.keeper`) keeps its hold, until the call settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
)
from typing import Any

from guardrail.engine.adapter import ProviderAdapter
from guardrail.engine.keeper import Kept, async_keeper, sync_keeper
from guardrail.engine.operations import (
    CountTokens,
    OpenStream,
    Recall,
    Release,
    Remember,
    Reserve,
    ReserveOffline,
    Send,
    Settle,
    Sleep,
    StreamEnd,
)
from guardrail.engine.plan import Plan
from guardrail.engine.raw_responses import hand_over, parse_async_raw, parsed_raw, parses_async
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import BudgetExceeded
from guardrail.observe.sinks import Outcome
from guardrail.stores.base import Store

__all__ = [
    "AsyncDriver",
    "AsyncGuardedStream",
    "GuardedStream",
    "SyncDriver",
    "parse_async_raw",
    "parsed_raw",
    "parses_async",
]

Flow = Generator[Any, Any, Any]


class SyncDriver:
    def __init__(
        self,
        store: Store,
        adapter: ProviderAdapter,
        send: Callable[[dict[str, Any]], Any],
        sleep: Callable[[float], None] = time.sleep,
        count: Callable[[dict[str, Any]], int] | None = None,
    ) -> None:
        self.store, self.adapter, self.send, self.sleep = store, adapter, send, sleep
        self.count = count

    def run(
        self, flow: Flow, plan: Plan, value: Any = None, exc: BaseException | None = None
    ) -> Any:
        kept: Kept | None = None  # the hold of the call being sent, kept until its next op
        while True:
            try:
                op = flow.throw(exc) if exc is not None else flow.send(value)
            except StopIteration as stop:
                _drop(kept)  # the flow ended (or raised): nothing left to keep
                return stop.value
            except BaseException:
                _drop(kept)
                raise
            if kept is not None and not isinstance(op, OpenStream):
                kept.drop()  # answered (or failed): the flow settles it now
                kept = None
            value, exc = None, None
            try:
                if isinstance(op, Send):
                    kept = sync_keeper().track(self.store, op.reservation, op.ttl_seconds)
                    value = self.send(op.kwargs)
                elif isinstance(op, Reserve):
                    value = self.store.reserve(op.request)
                elif isinstance(op, Settle):
                    value = self.store.settle(op.reservation, op.settlement)
                elif isinstance(op, Release):
                    self.store.release(op.reservation, failed=op.failed)
                elif isinstance(op, ReserveOffline):
                    value = _offline(self.store, "reserve_offline")(op.request)
                elif isinstance(op, Sleep):
                    self.sleep(op.seconds)
                elif isinstance(op, CountTokens):
                    kept = sync_keeper().track(self.store, op.reservation, op.ttl_seconds)
                    value = _counter(self.count)(op.kwargs)
                elif isinstance(op, Recall):
                    value = self.store.recall(op.scope, op.key)
                elif isinstance(op, Remember):
                    self.store.remember(op.scope, op.key, op.value, op.ttl_seconds)
                elif isinstance(op, OpenStream):  # the stream keeps the hold from here
                    stream, kept = GuardedStream(op, flow, self, plan, kept), None
                    return hand_over(stream)
            except BaseException as error:  # sent into the flow, which decides
                exc = error


class AsyncDriver:
    def __init__(
        self,
        store: Store,
        adapter: ProviderAdapter,
        send: Callable[[dict[str, Any]], Awaitable[Any]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        count: Callable[[dict[str, Any]], Awaitable[int]] | None = None,
    ) -> None:
        self.store, self.adapter, self.send, self.sleep = store, adapter, send, sleep
        self.count = count
        # The memory store's async reserve and writes are its sync ones (they never await):
        # calling those directly spares a coroutine each, and a write that cannot suspend
        # cannot be cut in half by a cancellation either.
        self.inline = getattr(store, "async_writes_never_suspend", False) is True

    def _write_now(self, op: Settle | Release) -> Any:
        if isinstance(op, Settle):
            return self.store.settle(op.reservation, op.settlement)
        return self.store.release(op.reservation, failed=op.failed)

    async def _write(self, op: Settle | Release) -> Any:
        if isinstance(op, Settle):
            return await self.store.asettle(op.reservation, op.settlement)
        return await self.store.arelease(op.reservation, failed=op.failed)

    async def run(
        self, flow: Flow, plan: Plan, value: Any = None, exc: BaseException | None = None
    ) -> Any:
        deferred: asyncio.CancelledError | None = None
        kept: Kept | None = None  # as in SyncDriver.run
        while True:
            try:
                op = flow.throw(exc) if exc is not None else flow.send(value)
            except StopIteration as stop:
                _drop(kept)
                if deferred is not None:
                    raise deferred from None
                return stop.value
            except BaseException:
                _drop(kept)
                raise
            if kept is not None and not isinstance(op, OpenStream):
                kept.drop()
                kept = None
            value, exc = None, None
            try:
                if isinstance(op, Send):
                    kept = async_keeper().track(self.store, op.reservation, op.ttl_seconds)
                    value = await self.send(op.kwargs)
                elif isinstance(op, Reserve):
                    if self.inline:
                        value = self.store.reserve(op.request)
                    else:
                        value = await self.store.areserve(op.request)
                elif isinstance(op, ReserveOffline):
                    value = await _offline(self.store, "areserve_offline")(op.request)
                elif self.inline and isinstance(op, (Settle, Release)):
                    value = self._write_now(op)
                elif isinstance(op, (Settle, Release)):
                    # A cancellation must not cut a settlement in half: the write runs to
                    # its end, the flow records the call, then the cancellation goes on.
                    try:
                        value = await _shielded(self.store, self._write(op))
                    except asyncio.CancelledError as cancelled:
                        deferred = cancelled
                elif isinstance(op, Sleep):
                    await self.sleep(op.seconds)
                elif isinstance(op, CountTokens):
                    kept = async_keeper().track(self.store, op.reservation, op.ttl_seconds)
                    value = await _counter(self.count)(op.kwargs)
                elif isinstance(op, Recall):
                    value = await self.store.arecall(op.scope, op.key)
                elif isinstance(op, Remember):
                    await self.store.aremember(op.scope, op.key, op.value, op.ttl_seconds)
                elif isinstance(op, OpenStream):
                    stream, kept = AsyncGuardedStream(op, flow, self, plan, kept), None
                    return hand_over(stream)
            except BaseException as error:
                exc = error


async def _shielded(store: Store, write: Coroutine[Any, Any, Any]) -> Any:
    """``await asyncio.shield(write)``, without the task when the store's async writes
    never suspend (``async_writes_never_suspend``, the memory store's): a coroutine with
    no suspension point cannot be cancelled half-way. A task per settlement costs the
    event loop a turn, during which every other call that has its response releases its
    connection, which the HTTP client's pool then probes (a syscall each) on every
    request: at 32 concurrent calls, 33 probes per call instead of 3.

    A write that suspends is never moved to a task after it started: its timeouts and
    context belong to the task it started in (redis-py's ``async_timeout`` cancels that
    task), so it is shielded from the start."""
    if getattr(store, "async_writes_never_suspend", False) is True:
        return await write
    return await asyncio.shield(write)


def _drop(kept: Kept | None) -> None:
    """Stop keeping a call's hold (the call settles, or ends)."""
    if kept is not None:
        kept.drop()


def _offline(store: Store, name: str) -> Callable[[Any], Any]:
    method = getattr(store, name, None)
    if method is None:  # the flow lets the call through unheld
        raise NotImplementedError(f"{type(store).__name__} has no {name}")
    return method  # type: ignore[no-any-return]


def _counter(count: Callable[[dict[str, Any]], Any] | None) -> Callable[[dict[str, Any]], Any]:
    if count is None:  # the flow treats this like a failed count: it keeps its estimate
        raise RuntimeError("this driver was given no way to count tokens")
    return count


class _StreamBase:
    """What the sync and async guarded streams share: chunk filtering and the end-state.
    ``kept``: the call's hold, kept while the stream is open, however long it is silent."""

    def __init__(
        self,
        op: OpenStream,
        flow: Flow,
        plan: Plan,
        store: Store,
        adapter: ProviderAdapter,
        kept: Kept | None,
    ) -> None:
        stream = op.stream
        self._raw = None
        if (
            hasattr(stream, "parse")
            and not hasattr(stream, "__iter__")
            and not hasattr(stream, "__aiter__")
        ):
            self._raw, stream = stream, parsed_raw(stream)
        self._stream = stream
        self._tally: StreamTally = op.tally
        self._flow: Flow | None = flow
        self._plan = plan
        self._adapter = adapter
        self._kept = kept
        # A stream dropped half-read (no close, no loop end) is settled when it is
        # garbage-collected: the finaliser holds the flow, so the flow outlives the stream.
        self._abandoned = weakref.finalize(
            self, _settle_abandoned, flow, store, adapter, plan, kept
        )

    @property
    def tally(self) -> StreamTally:
        return self._tally

    def _observe(self, chunk: Any) -> bool:
        """Tally a chunk; whether the caller sees it."""
        tally = self._tally
        if tally.first_chunk_at is None:
            tally.first_chunk_at = time.monotonic()
            model = getattr(chunk, "model", None)
            tally.response_model = model if isinstance(model, str) else None
        return self._adapter.observe_chunk(chunk, tally)

    def _overran(self) -> bool:
        """Whether to stop because the output overran its reservation (or raise, per policy)."""
        if self._tally.overrun and self._plan.policy.stream_overrun == "raise":
            raise self._overrun_error()
        return self._tally.overrun

    def _overrun_error(self) -> BudgetExceeded:
        return BudgetExceeded(
            tenant=self._plan.tenant,
            limit="reserved output tokens",
            requested=self._tally.output_tokens,
            remaining=self._plan.reserved_output,
            cap=self._plan.reserved_output,
            detail="the stream produced more output than was reserved; it was closed",
        )

    def _take_flow(self) -> Flow | None:
        """The parked flow, once (the stream ended: its hold is no longer kept)."""
        flow, self._flow = self._flow, None
        if flow is not None:
            self._abandoned.detach()
            if self._kept is not None:
                self._kept.drop()
        return flow

    @property
    def response(self) -> Any:
        """The stream's HTTP response. The SDK's ``stream()`` helpers close a stream
        through it: closing it here closes (and settles) this guarded stream first."""
        return _ClosingResponse(self, self._stream.response)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): never recurse into _stream
            raise AttributeError(name)
        return getattr(self._stream, name)


class _ClosingResponse:
    """An HTTP response whose ``close()`` / ``aclose()`` close its guarded stream."""

    def __init__(self, guarded: Any, response: Any) -> None:
        self._guarded, self._response = guarded, response

    def close(self) -> None:
        self._guarded.close()
        self._response.close()

    async def aclose(self) -> None:
        await self._guarded.close()
        await self._response.aclose()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._response, name)


def _settle_abandoned(
    flow: Flow, store: Store, adapter: ProviderAdapter, plan: Plan, kept: Kept | None
) -> None:
    """Settle a stream nobody finished, from what it counted. Only store writes remain in
    the flow, so the sync face of the store serves sync and async streams alike."""
    with contextlib.suppress(Exception):  # a finaliser must never raise
        if kept is not None:
            kept.drop()
        SyncDriver(store, adapter, _no_send).run(flow, plan, StreamEnd("stream_closed"))


def _no_send(kwargs: dict[str, Any]) -> Any:
    raise RuntimeError("an abandoned stream sends nothing")


class GuardedStream(_StreamBase):
    """An ``openai.Stream`` look-alike that settles the call when the stream ends."""

    def __init__(
        self, op: OpenStream, flow: Flow, driver: SyncDriver, plan: Plan, kept: Kept | None
    ) -> None:
        super().__init__(op, flow, plan, driver.store, driver.adapter, kept)
        self._driver = driver
        self._chunks = self._generate()

    def _finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        flow = self._take_flow()
        if flow is not None:
            self._driver.run(flow, self._plan, StreamEnd(outcome, error))

    def _generate(self) -> Generator[Any, None, None]:
        outcome: Outcome = "stream_closed"
        error: BaseException | None = None
        try:
            for chunk in self._stream:
                if self._observe(chunk):
                    yield chunk
                if self._overran():
                    break
            else:
                outcome = "stream_completed"
        except GeneratorExit:  # the caller broke out of the loop or closed the stream
            raise
        except BaseException as exc:
            outcome, error = ("stream_error", exc)
            raise
        finally:
            if outcome != "stream_completed":
                _close_quietly(self._stream)
            self._finish(outcome, error)

    def __iter__(self) -> Iterator[Any]:
        # A fresh generator per loop: when the caller breaks out, only the loop holds it,
        # so it is closed at once, and closing it closes (and settles) the stream.
        yield from self._chunks

    def __next__(self) -> Any:
        return next(self._chunks)

    def close(self) -> None:
        if getattr(self._chunks, "gi_running", False):
            # Another thread is reading (a "stop" button): a running generator cannot be
            # closed, but its stream can, and the read it waits on then ends, in its finally
            # closing and settling the call.
            _close_quietly(self._stream)
            return
        self._chunks.close()  # runs the generator's finally: close and settle
        if self._flow is not None:  # never started: nothing ran the finally
            _close_quietly(self._stream)
            self._finish("stream_closed")

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncGuardedStream(_StreamBase):
    """An ``openai.AsyncStream`` look-alike that settles the call when the stream ends."""

    def __init__(
        self, op: OpenStream, flow: Flow, driver: AsyncDriver, plan: Plan, kept: Kept | None
    ) -> None:
        super().__init__(op, flow, plan, driver.store, driver.adapter, kept)
        self._driver = driver
        self._chunks = self._generate()
        self._closing = False

    async def _finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        flow = self._take_flow()
        if flow is not None:
            await self._driver.run(flow, self._plan, StreamEnd(outcome, error))

    async def _generate(self) -> AsyncGenerator[Any, None]:
        outcome: Outcome = "stream_closed"
        error: BaseException | None = None
        try:
            async for chunk in self._stream:
                if self._observe(chunk):
                    yield chunk
                if self._overran():
                    break
            else:
                outcome = "stream_completed"
        except (GeneratorExit, asyncio.CancelledError):  # closed, or the caller went away
            raise
        except BaseException as exc:
            outcome, error = ("stream_error", exc)
            raise
        finally:
            if outcome != "stream_completed":
                await _aclose_quietly(self._stream)
            await self._finish(outcome, error)

    async def __aiter__(self) -> AsyncIterator[Any]:
        # Breaking out of ``async for`` leaves this generator to the event loop's
        # finaliser, which closes it (and so the stream) soon after; ``close()`` is sooner.
        try:
            async for chunk in self._chunks:
                yield chunk
        finally:
            # The loop's finaliser runs this after a ``break``, maybe while ``close()`` is
            # closing the chunks already (then they are settled by it): do not close twice.
            if not self._closing:
                await self._chunks.aclose()

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def close(self) -> None:
        if getattr(self._chunks, "ag_running", False):  # another task reads: see GuardedStream
            await _aclose_quietly(self._stream)
            return
        self._closing = True
        await self._chunks.aclose()
        if self._flow is not None:
            await _aclose_quietly(self._stream)
            await self._finish("stream_closed")

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _close_quietly(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # a broken connection may fail to close again
            close()


async def _aclose_quietly(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
