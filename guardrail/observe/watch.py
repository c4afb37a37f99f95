"""The store, watched: its latency, errors and reservations in flight for the metrics,
its failures and spool for the alerts; and how a Guard wires telemetry and alerts in.

:class:`ObservedStore` wraps the guard's store (only when telemetry or alerts are on) and
forwards everything to it; the engine and drivers see one more :class:`~guardrail.Store`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from guardrail.errors import GuardrailError, StoreUnavailable
from guardrail.observe.rules import StoreProblem
from guardrail.observe.sinks import Sink
from guardrail.stores.base import (
    Reservation,
    ReservationRequest,
    Settlement,
    Store,
    UsageRow,
    UsageSummary,
)

if TYPE_CHECKING:
    from guardrail.observe.alerts import Alerts
    from guardrail.observe.telemetry import Telemetry

__all__ = ["ObservedStore", "observing"]

_PROBLEM_EVERY = 10.0  # seconds between two reports of one kind of store problem


_OFFLINE = frozenset(("reserve_offline", "areserve_offline"))
"""The store's own reservations while it is down (a fail-open call's): present only when
the inner store has them, and counted in flight like any other, since their settlement
goes through :meth:`ObservedStore.settle`."""


def _counted(reserve: Any, in_flight: Any, is_async: bool) -> Any:
    """``reserve`` counting one more reservation in flight when it answers."""
    if is_async:

        async def areserve(request: ReservationRequest) -> Reservation:
            reservation: Reservation = await reserve(request)
            in_flight(1)
            return reservation

        return areserve

    def sync_reserve(request: ReservationRequest) -> Reservation:
        reservation: Reservation = reserve(request)
        in_flight(1)
        return reservation

    return sync_reserve


class ObservedStore:
    """A :class:`~guardrail.Store` that times every reserve, settle and release of
    ``inner``, counts its failures and the reservations in flight, and tells ``alerts``
    when it fails or when settlements wait in its spool. ``inner`` is reachable as
    ``.inner``; any other attribute is ``inner``'s."""

    def __init__(self, inner: Store, telemetry: Telemetry | None, alerts: Alerts | None) -> None:
        self.inner = inner
        self.windows = inner.windows
        self._telemetry = telemetry
        self._alerts = alerts
        self._spool = getattr(inner, "spool", None)
        self._reported: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        found = getattr(self.inner, name)
        if name in _OFFLINE:  # held too (fail-open), and settled through this store
            return _counted(found, self._in_flight, name.startswith("a"))
        return found

    def now(self) -> float:
        return self.inner.now()

    # -- what is reported

    def _done(self, operation: str, started: float, error: BaseException | None) -> None:
        if self._telemetry is not None:
            self._telemetry.store_operation(operation, time.perf_counter() - started, error)
        if error is not None:
            self._problem("store_unavailable", operation, error)
        elif operation != "reserve" and self._spool is not None and self._spool.pending():
            self._problem("spool_pending", operation, None)

    def _problem(self, kind: str, operation: str, error: BaseException | None) -> None:
        if self._alerts is None:
            return
        now = time.monotonic()
        if now < self._reported.get(kind, 0.0):
            return
        self._reported[kind] = now + _PROBLEM_EVERY
        self._alerts.store_problem(
            StoreProblem(
                kind,  # type: ignore[arg-type]
                operation,
                self.inner.now(),
                None if error is None else f"{type(error).__name__}: {error}",
            )
        )

    def _in_flight(self, delta: int) -> None:
        if self._telemetry is not None:
            self._telemetry.in_flight(delta)

    # -- the Store interface, sync

    def reserve(self, request: ReservationRequest) -> Reservation:
        started = time.perf_counter()
        try:
            reservation = self.inner.reserve(request)
        except StoreUnavailable as exc:  # the store's own failure, described
            self._done("reserve", started, exc)
            raise
        except GuardrailError:  # a refusal is an answer, not a failure
            self._done("reserve", started, None)
            raise
        except Exception as exc:
            self._done("reserve", started, exc)
            raise
        self._done("reserve", started, None)
        self._in_flight(1)
        return reservation

    def settle(self, reservation: Reservation, settlement: Settlement) -> str | None:
        started = time.perf_counter()
        try:
            written = self.inner.settle(reservation, settlement)
        except Exception as exc:
            self._done("settle", started, exc)
            raise
        finally:
            self._in_flight(-1)
        self._done("settle", started, None)
        return written

    def release(self, reservation: Reservation, *, failed: bool = False) -> str | None:
        started = time.perf_counter()
        try:
            written = self.inner.release(reservation, failed=failed)
        except Exception as exc:
            self._done("release", started, exc)
            raise
        finally:
            self._in_flight(-1)
        self._done("release", started, None)
        return written

    def usage(self, scope: str, day: date | None = None) -> UsageSummary:
        return self.inner.usage(scope, day)

    def usage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        return self.inner.usage_report(scopes, start, end)

    def claim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        return self.inner.claim_once(scope, key, ttl_seconds)

    def remember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        self.inner.remember(scope, key, value, ttl_seconds)

    def recall(self, scope: str, key: str) -> int | None:
        return self.inner.recall(scope, key)

    # -- the Store interface, async

    async def areserve(self, request: ReservationRequest) -> Reservation:
        started = time.perf_counter()
        try:
            reservation = await self.inner.areserve(request)
        except StoreUnavailable as exc:  # the store's own failure, described
            self._done("reserve", started, exc)
            raise
        except GuardrailError:
            self._done("reserve", started, None)
            raise
        except Exception as exc:
            self._done("reserve", started, exc)
            raise
        self._done("reserve", started, None)
        self._in_flight(1)
        return reservation

    async def asettle(self, reservation: Reservation, settlement: Settlement) -> str | None:
        started = time.perf_counter()
        try:
            written = await self.inner.asettle(reservation, settlement)
        except Exception as exc:
            self._done("settle", started, exc)
            raise
        finally:
            self._in_flight(-1)
        self._done("settle", started, None)
        return written

    async def arelease(self, reservation: Reservation, *, failed: bool = False) -> str | None:
        started = time.perf_counter()
        try:
            written = await self.inner.arelease(reservation, failed=failed)
        except Exception as exc:
            self._done("release", started, exc)
            raise
        finally:
            self._in_flight(-1)
        self._done("release", started, None)
        return written

    async def ausage(self, scope: str, day: date | None = None) -> UsageSummary:
        return await self.inner.ausage(scope, day)

    async def ausage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        return await self.inner.ausage_report(scopes, start, end)

    async def aclaim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        return await self.inner.aclaim_once(scope, key, ttl_seconds)

    async def aremember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        await self.inner.aremember(scope, key, value, ttl_seconds)

    async def arecall(self, scope: str, key: str) -> int | None:
        return await self.inner.arecall(scope, key)


def observing(
    store: Store, *, telemetry: Telemetry | bool | None, alerts: Alerts | None
) -> tuple[Store, list[Sink]]:
    """What ``Guard(telemetry=..., alerts=...)`` does: the store to use (watched when
    either is on) and the sinks to add."""
    if telemetry is True:
        from guardrail.observe.telemetry import Telemetry

        telemetry = Telemetry()
    tel = telemetry or None
    sinks: list[Sink] = []
    if tel is not None:
        sinks.append(tel)
    if alerts is not None:
        alerts.bind(store, tel)
        sinks.append(alerts)
    if tel is None and alerts is None:
        return store, sinks
    return ObservedStore(store, tel, alerts), sinks
