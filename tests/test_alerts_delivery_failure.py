"""An alert that could not be delivered (every attempt of every destination failed) gives
its claim back, so the next event of its window fires it again: a webhook answering 500
for a moment (a deploy of the receiver) silenced the alert for its whole window, two
days for a daily threshold (found by a review). One delivered alert keeps its claim.
On the memory store and on Redis (fakeredis and a real one), whose claims are shared by
every process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from guardrail import Alerts, ManualClock
from guardrail.observe import AlertEvent, SpendThresholdRule, Webhook
from guardrail.stores.base import ScopeLimits, usd_to_nanos
from tests._alerts import spent
from tests._redis_helpers import KINDS, cleanup, make_store

LIMITS = (ScopeLimits("acme", daily_nanos=usd_to_nanos(Decimal(10))),)


class FlakyHook:
    """A webhook receiver answering 500 to its first ``failures`` POSTs, then 200."""

    def __init__(self, failures: int) -> None:
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(hook.statuses) < failures else 200
                hook.statuses.append(status)
                if status == 200:
                    hook.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = make_store(str(request.param), ManualClock(), tmp_path)
    try:
        yield made
    finally:
        cleanup(made)


def _alerts(destinations: list[Any]) -> Alerts:
    rule = SpendThresholdRule(shares=(0.8,))
    return Alerts([rule], destinations, attempts=3, backoff_seconds=0.0, refresh_seconds=0.0)


def test_an_alert_no_one_received_fires_again_with_the_next_event(store) -> None:
    hook = FlakyHook(failures=3)  # one event's three attempts fail
    alerts = _alerts([Webhook(hook.url)])
    alerts.bind(store)
    try:
        for n, usd in enumerate(["8.5", "0.1", "0.1"]):  # past 80% of $10 from the first
            alerts(spent(store, usd, n, LIMITS))
            assert alerts.flush(10)
        assert hook.statuses == [500, 500, 500, 200]  # fired again, then delivered
        assert [body["figures"]["threshold"] for body in hook.bodies] == [0.8]
        stats = alerts.stats
        assert (stats.fired, stats.failed, stats.delivered, stats.suppressed) == (2, 1, 1, 1)
    finally:
        alerts.close()
        hook.close()


def test_one_destination_that_received_it_keeps_the_claim(store) -> None:
    hook = FlakyHook(failures=100)  # never answers 200
    received: list[AlertEvent] = []
    alerts = _alerts([Webhook(hook.url), received.append])
    alerts.bind(store)
    try:
        for n, usd in enumerate(["8.5", "0.1"]):
            alerts(spent(store, usd, n, LIMITS))
            assert alerts.flush(10)
        assert len(received) == 1 and hook.statuses == [500, 500, 500]  # not fired again
        assert alerts.stats.suppressed == 1
    finally:
        alerts.close()
        hook.close()
