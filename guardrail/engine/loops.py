"""Loop detection: the same request, again and again, from one tenant."""

from __future__ import annotations

import threading
from collections import deque

from guardrail._clock import Clock
from guardrail.errors import LoopDetected
from guardrail.policy import Policy

__all__ = ["LoopDetector"]


class LoopDetector:
    """Counts identical request fingerprints per tenant in a sliding time window."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, tenant: str, fingerprint: str, policy: Policy) -> None:
        if policy.loop_limit is None:
            return
        now = self._clock()
        horizon = now - policy.loop_window_seconds
        with self._lock:
            times = self._seen.setdefault((tenant, fingerprint), deque())
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) >= policy.loop_limit:
                raise LoopDetected(
                    tenant=tenant,
                    repeats=len(times) + 1,
                    window_seconds=policy.loop_window_seconds,
                    limit=policy.loop_limit,
                )
            times.append(now)
            if len(self._seen) > 50_000:  # bounded: forget fingerprints gone quiet
                self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > horizon}
