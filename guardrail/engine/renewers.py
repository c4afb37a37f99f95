"""Renewers: the sync keeper's (:mod:`guardrail.engine.keeper`) worker threads, one per
store whose writes may block (a Redis store's), so that a store that hangs (a Redis that
stopped answering) delays the renewals of its own holds only, never another store's.

The keeper's thread hands a store's due holds to that store's worker, starting one when
none runs; the worker renews what it has been handed in one pass (a store that failed once
in it is not asked again) and ends once it had nothing to do for ``idle`` seconds. A hold
handed over stays busy until its outcome is applied, so it is never handed twice; the
holds due meanwhile wait in the worker's queue, behind the renewal that hangs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guardrail.engine.keeper import Kept
    from guardrail.stores.base import Store

__all__ = ["Renewers"]

_log = logging.getLogger("guardrail")


class _Worker:
    __slots__ = ("due", "store", "thread", "wake")

    def __init__(self, lock: threading.Lock, store: Store) -> None:
        self.store = store  # held: its id keys the worker while it runs
        self.due: list[Kept] = []
        self.wake = threading.Condition(lock)
        self.thread: threading.Thread | None = None


class Renewers:
    """The workers of one keeper, under the keeper's ``lock``; ``renew`` renews a batch of
    one store's holds and applies their outcomes (taking the lock itself)."""

    def __init__(self, lock: threading.Lock, renew: Callable[[list[Kept]], None], idle: float):
        self._lock, self._renew, self.idle = lock, renew, idle
        self._workers: dict[int, _Worker] = {}  # by id(store)

    @property
    def threads(self) -> list[threading.Thread]:
        """The workers' threads (the lock held or not)."""
        return [w.thread for w in list(self._workers.values()) if w.thread is not None]

    def hand(self, due: list[Kept]) -> list[Kept]:
        """Queue each hold of ``due`` (marked busy) to its store's worker (the lock held);
        the holds no worker could take (no thread to be had), for the caller to renew."""
        left: list[Kept] = []
        for kept in due:
            worker = self._workers.get(id(kept.store)) or self._start(kept.store)
            if worker is None:
                left.append(kept)
                continue
            worker.due.append(kept)
            worker.wake.notify()
        return left

    def _start(self, store: Store) -> _Worker | None:
        worker = self._workers[id(store)] = _Worker(self._lock, store)
        worker.thread = threading.Thread(
            target=self._work, args=(worker,), name="guardrail-hold-renewer", daemon=True
        )
        try:
            worker.thread.start()  # it waits for the lock, held here
        except Exception as exc:
            del self._workers[id(store)]
            _log.error("guardrail: cannot start a thread that renews holds: %r", exc)
            return None
        return worker

    def _work(self, worker: _Worker) -> None:
        batch: list[Kept] = []
        try:
            while True:
                with self._lock:
                    if not worker.wake.wait_for(lambda: worker.due, self.idle):
                        self._end(worker)
                        return
                    batch, worker.due = worker.due, []
                self._renew(batch)
                batch = []
        except BaseException as exc:  # pragma: no cover - a bug: log it, free its holds
            _log.error("guardrail: a thread that renews holds failed: %r", exc)
            with self._lock:
                self._end(worker)
                for kept in batch + worker.due:  # no one else renews these: due again
                    kept.busy = False

    def _end(self, worker: _Worker) -> None:
        """The worker ends (the lock held): a store with holds due next gets a new one."""
        if self._workers.get(id(worker.store)) is worker:
            del self._workers[id(worker.store)]
