"""Holding and returning reservations: the store's answer, or (when the store fails) the
policy's: fail closed (refuse) or fail open (let the call through unmetered)."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from guardrail.engine.operations import Op, Release, Reserve
from guardrail.errors import GuardrailError, StoreUnavailable
from guardrail.stores.base import Reservation, ReservationRequest

if TYPE_CHECKING:
    from guardrail.engine.core import Engine

__all__ = ["release", "reserve"]

_log = logging.getLogger("guardrail")


def reserve(engine: Engine, request: ReservationRequest) -> Generator[Op, Any, Reservation]:
    try:
        reservation: Reservation = yield Reserve(request)
    except GuardrailError:
        raise
    except Exception as exc:
        scope = request.scopes[0].scope if request.scopes else None
        if engine.on_store_error == "fail_closed":
            raise StoreUnavailable(
                f"budget store failed on reserve: {exc!r}", tenant=scope
            ) from exc
        _log.error("guardrail: store failed on reserve (%r); failing OPEN for %s", exc, scope)
        return _unheld(engine, request)
    return reservation


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


def release(reservation: Reservation | None) -> Generator[Op, Any, None]:
    if reservation is None:
        return
    try:
        yield Release(reservation)
    except Exception as exc:  # the TTL will return it; never mask the call's own error
        _log.error("guardrail: could not release reservation %s: %r", reservation.id, exc)
