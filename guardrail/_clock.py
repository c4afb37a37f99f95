"""Clocks. Everything time-dependent takes a clock so tests move time instead of sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "ManualClock", "system_clock"]

Clock = Callable[[], float]
"""A callable returning the current time as POSIX seconds."""


def system_clock() -> float:
    return time.time()


class ManualClock:
    """A clock that only moves when told to (``advance``/``set``); thread-safe.

    >>> clock = ManualClock(datetime(2026, 1, 31, 23, 59, tzinfo=timezone.utc))
    >>> clock.advance(120)  # now 2026-02-01 00:01 UTC: a new day and a new month
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        self._lock = threading.Lock()
        self._now = self._to_seconds(start if start is not None else time.time())

    @staticmethod
    def _to_seconds(value: datetime | float) -> float:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("ManualClock needs an aware datetime (give it a tzinfo)")
            return value.timestamp()
        return float(value)

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds

    def set(self, when: datetime | float) -> None:
        with self._lock:
            self._now = self._to_seconds(when)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), tz=UTC)
