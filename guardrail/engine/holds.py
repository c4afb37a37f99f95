"""Holding and returning reservations: the store's answer, or (when the store fails) the
policy's: fail closed (refuse) or fail open (let the call through, reserved against what
this process alone knows when the store can: ``ReserveOffline``)."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from guardrail.engine.operations import Op, Release, Reserve, ReserveOffline
from guardrail.errors import BudgetExceeded, GuardrailError, StoreUnavailable
from guardrail.stores.base import Reservation, ReservationRequest

if TYPE_CHECKING:
    from guardrail.engine.core import Engine

__all__ = ["not_renewed", "release", "renew_at", "renewal_failed", "reserve"]

_log = logging.getLogger("guardrail")


def reserve(engine: Engine, request: ReservationRequest) -> Generator[Op, Any, Reservation]:
    try:
        reservation: Reservation = yield Reserve(request)
    except StoreUnavailable as exc:
        return (yield from _store_failed(engine, request, exc, str(exc)))
    except GuardrailError:
        raise
    except Exception as exc:
        return (yield from _store_failed(engine, request, exc, f"budget store failed: {exc!r}"))
    return reservation


def _store_failed(
    engine: Engine, request: ReservationRequest, exc: Exception, message: str
) -> Generator[Op, Any, Reservation]:
    scope = request.scopes[0].scope if request.scopes else None
    if engine.on_store_error == "fail_closed":
        raise StoreUnavailable(f"{message}; nothing was sent", tenant=scope) from exc
    try:  # fail open, within what this process alone knows the tenant has spent
        held: Reservation = yield ReserveOffline(request)
    except BudgetExceeded:
        raise
    except Exception:
        held = _unheld(engine, request)
    _log.error("guardrail: %s; failing OPEN for %s", message, scope)
    return held


def _unheld(engine: Engine, request: ReservationRequest) -> Reservation:
    """A reservation the store never granted (fail-open): nothing to release, but the
    call's actual usage is still settled (or spooled by the store) afterwards."""
    now = engine.clock()
    day, month = engine.windows.keys(now)
    return Reservation(
        id=request.id,
        scopes=tuple(s.scope for s in request.scopes),
        cost_nanos=0,
        tokens=0,
        day=day,
        month=month,
        created_at=now,
        expires_at=now,
        model=request.model,
    )


def release(reservation: Reservation | None, *, failed: bool = False) -> Generator[Op, Any, None]:
    """Return a reservation whole; ``failed``: the request was sent and failed (it counts
    towards the loop check)."""
    if reservation is None:
        return
    try:
        yield Release(reservation, failed)
    except Exception as exc:  # the TTL will return it; never mask the call's own error
        _log.error("guardrail: could not release reservation %s: %r", reservation.id, exc)


def renew_at(reservation: Reservation, ttl_seconds: float) -> float:
    """When a live call's hold is renewed (by its store's clock): half its TTL before it
    would expire. A hold expires by itself only so that a crashed process gives its room
    back; a call still running past it would let other calls spend that room."""
    return reservation.expires_at - ttl_seconds / 2


def renewal_failed(reservation: Reservation, exc: BaseException) -> None:
    """Log a renewal the store failed (the call goes on; its hold may expire meanwhile)."""
    _log.error("guardrail: could not renew reservation %s: %r", reservation.id, exc)


def not_renewed(reservation: Reservation) -> None:
    """Log a hold the store no longer had to renew (the call goes on without it)."""
    _log.warning(
        "guardrail: reservation %s could not be renewed (expired already, or the store "
        "cannot renew holds); the call goes on without it",
        reservation.id,
    )
