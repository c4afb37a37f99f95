"""Where alerts go, off the call path: a Python callable, a webhook, the log.

Each destination gets its own :class:`Worker`: one daemon thread draining a bounded queue.
Putting an event on it never blocks (a full queue drops it, and the drop is counted); a
failing destination is retried with exponential backoff and jitter, then given up on
(counted too). A slow or dead webhook therefore delays only its own queue, never a call
and never the other destinations.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from guardrail.errors import ConfigurationError
from guardrail.observe.rules import AlertEvent

__all__ = ["Destination", "LogDestination", "Webhook", "Worker"]

_log = logging.getLogger("guardrail")

Destination = Callable[[AlertEvent], object]
"""Anything called with each :class:`AlertEvent`; an exception means "retry"."""


class Worker:
    """A daemon thread that hands each item of a bounded queue to ``handle``.

    :meth:`put` never blocks: it returns False when ``maxsize`` items already wait. The
    worker drains the queue in batches and is woken only when it waits for work, so a
    busy caller pays a lock and an append per item, not a thread wake-up. The thread
    starts with the first item (and again in a child process after a fork). :meth:`join`
    waits, with a timeout, until every item put so far has been handled.
    """

    def __init__(self, name: str, handle: Callable[[Any], None], maxsize: int) -> None:
        self.name = name
        self._handle = handle
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._items: deque[Any] = deque()
        self._pending = 0  # put and not yet handled (queued or in hand)
        self._waiting = False
        self._stopped = False
        self._pid = -1
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def _start(self) -> None:
        # Called with the lock held. After a fork the parent's thread is not ours: start anew.
        self._items.clear()
        self._pending = 0
        self._waiting = self._stopped = False
        self._pid = os.getpid()
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        with self._lock:
            if self._pid != os.getpid() or self._stopped:
                self._start()
            if self._pending >= self._maxsize:
                return False
            self._pending += 1
            self._items.append(item)
            if self._waiting:
                self._work.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._items and not self._stopped:
                    self._waiting = True
                    self._work.wait()
                    self._waiting = False
                if not self._items:  # stopped, and nothing left
                    return
                batch = list(self._items)
                self._items.clear()
            for item in batch:
                try:
                    self._handle(item)
                except Exception:  # a worker never dies of one item
                    _log.exception("guardrail: %s failed", self.name)
            with self._lock:
                self._pending -= len(batch)
                if self._pending == 0:
                    self._idle.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put so far is handled; False if ``timeout`` ran out."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Handle what is queued (within ``timeout``), then end the thread."""
        done = self.join(timeout)
        self.stopping.set()  # cuts short a backoff wait
        with self._lock:
            thread, mine = self._thread, self._pid == os.getpid()
            self._stopped = True
            self._work.notify()
        if thread is not None and mine:
            thread.join(timeout)
        return done


class Delivery:
    """Delivers events to one destination, with retries: ``attempts`` in all, waiting
    ``backoff`` seconds, doubling, with jitter, between them."""

    def __init__(
        self,
        destination: Destination,
        *,
        attempts: int,
        backoff: float,
        maxsize: int,
        on_result: Callable[[AlertEvent, BaseException | None], None],
    ) -> None:
        self.destination = destination
        self.attempts = attempts
        self.backoff = backoff
        self.on_result = on_result
        self.worker = Worker(f"guardrail-alerts:{_name(destination)}", self._deliver, maxsize)

    def _deliver(self, event: AlertEvent) -> None:
        error: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                if self.worker.stopping.wait(delay):
                    break
            try:
                self.destination(event)
            except Exception as exc:
                error = exc
                continue
            self.on_result(event, None)
            return
        _log.warning(
            "guardrail: alert %s for %s not delivered to %s: %r",
            event.rule,
            event.scope,
            _name(self.destination),
            error,
        )
        self.on_result(event, error or RuntimeError("stopped"))


def _slack_escaped(text: str) -> str:
    """Slack's escaping of message text: a model or tenant name a caller chose is shown as
    it is, never read as a mention (``<!channel>``) or a link (``<https://...|label>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _name(destination: Destination) -> str:
    name = getattr(destination, "name", None) or getattr(destination, "__name__", None)
    return name if isinstance(name, str) else type(destination).__name__


class Webhook:
    """POSTs each event as JSON (:meth:`AlertEvent.to_dict`) to ``url``.

    ``slack=True`` sends ``{"text": ...}`` only, the body a Slack (or Mattermost) incoming
    webhook takes. ``timeout`` bounds each connect and read, in seconds; any answer
    outside 2xx is a failure, retried by the delivery. Uses the standard library's
    ``urllib`` (so no HTTP client is imposed; it honours ``HTTPS_PROXY``), in the
    destination's own thread.
    """

    def __init__(
        self,
        url: str,
        *,
        slack: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"a webhook url must be http:// or https://, got {url!r}")
        if not timeout > 0:
            raise ConfigurationError(f"a webhook timeout must be > 0 seconds, got {timeout!r}")
        self.url = url
        self.slack = slack
        self.headers = {"Content-Type": "application/json", "User-Agent": "guardrail-alerts"}
        self.headers.update(headers or {})
        self.timeout = timeout
        # Never the whole url in logs or metrics: a Slack webhook's path is its secret.
        self.name = f"webhook {urllib.parse.urlsplit(url).hostname}"

    def body(self, event: AlertEvent) -> bytes:
        payload = {"text": _slack_escaped(event.text)} if self.slack else event.to_dict()
        return json.dumps(payload, separators=(",", ":")).encode()

    def __call__(self, event: AlertEvent) -> None:
        request = urllib.request.Request(
            self.url, data=self.body(event), headers=self.headers, method="POST"
        )
        # urlopen raises HTTPError for 4xx/5xx (after reading nothing more than the status)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read(65_536)


class LogDestination:
    """Logs each event (at WARNING, on ``guardrail.alerts``): its text, then its JSON."""

    def __init__(self, logger: logging.Logger | str = "guardrail.alerts", level: int = 30) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self.name = f"log {self.logger.name}"

    def __call__(self, event: AlertEvent) -> None:
        self.logger.log(
            self.level, "%s %s", event.text, json.dumps(event.to_dict(), sort_keys=True)
        )
