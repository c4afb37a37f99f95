"""The operations a call's flow yields to its driver.

The flow (:mod:`guardrail.engine.flow`) decides; a driver (:mod:`guardrail.engine.drivers`)
performs each operation and sends its result (or its exception) back into the flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guardrail.engine.stream_tally import StreamTally
from guardrail.observe.sinks import Outcome
from guardrail.stores.base import Reservation, ReservationRequest, Settlement

__all__ = [
    "CountTokens",
    "Op",
    "OpenStream",
    "Recall",
    "Release",
    "Remember",
    "Reserve",
    "ReserveOffline",
    "Send",
    "Settle",
    "Sleep",
    "StreamEnd",
]


@dataclass(frozen=True)
class Reserve:
    request: ReservationRequest


@dataclass(frozen=True)
class ReserveOffline:
    """The store failed and the guard fails open: reserve against what this process alone
    knows (the store's ``reserve_offline``), so one process cannot spend past a cap during
    an outage. A store without it lets the call through unheld."""

    request: ReservationRequest


@dataclass(frozen=True)
class Release:
    reservation: Reservation
    failed: bool = False
    """The request was sent and failed (an HTTP error): a failure for the loop check."""


@dataclass(frozen=True)
class Settle:
    reservation: Reservation
    settlement: Settlement


@dataclass(frozen=True)
class Send:
    """Send the request. ``reservation``: the call's hold (None when nothing is held),
    kept by the driver while the call is in flight: renewed half a TTL (``ttl_seconds``)
    before it would expire, until the call settles (a stream's, until the stream ends)."""

    kwargs: dict[str, Any]
    reservation: Reservation | None = None
    ttl_seconds: float = 0.0


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class OpenStream:
    """Hand the caller a guarded stream; the flow resumes with a :class:`StreamEnd` once
    the stream ends (its hold kept meanwhile, see :class:`Send`)."""

    stream: Any
    tally: StreamTally


@dataclass(frozen=True)
class StreamEnd:
    outcome: Outcome
    error: BaseException | None = None


@dataclass(frozen=True)
class CountTokens:
    """Ask the provider for its own count of the prompt about to be sent (Anthropic's
    ``messages.count_tokens``); the flow resumes with an int, or with the error. The call's
    hold (``reservation``, ``ttl_seconds``) is kept while the count is awaited, as for
    :class:`Send`: a count may take as long as its timeout, a short TTL less."""

    kwargs: dict[str, Any]
    reservation: Reservation | None = None
    ttl_seconds: float = 0.0


@dataclass(frozen=True)
class Recall:
    """Read a number the store keeps for a scope (what a stored response left in its
    context); the flow resumes with an int, None, or the error."""

    scope: str
    key: str


@dataclass(frozen=True)
class Remember:
    """Keep a number for a scope, for ``ttl_seconds``."""

    scope: str
    key: str
    value: int
    ttl_seconds: int


Op = (
    Reserve
    | ReserveOffline
    | Release
    | Settle
    | Send
    | Sleep
    | OpenStream
    | CountTokens
    | Recall
    | Remember
)
