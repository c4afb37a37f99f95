"""Alert delivery against a local HTTP server that answers, is slow, fails or is down:
retried with backoff, dropped and counted when it must be, and never in a call's way."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from guardrail import (
    Alerts,
    BudgetExceeded,
    ConfigurationError,
    Guard,
    ManualClock,
    MemoryStore,
    Policy,
    UsageRecord,
)
from guardrail.observe import AlertEvent, LogDestination, Refusal, RefusalRule, Webhook

HELLO = [{"role": "user", "content": "hello"}]


class Hook:
    """A webhook receiver on a loopback port; ``answers`` scripts the status of each POST
    (200 once the script runs out); ``hold`` keeps every answer until it is set."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Semaphore(0)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                hook.arrived.release()
                hook.hold.wait(30)
                status = hook.answers.pop(0) if hook.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/secret"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


def _refusing_guard(alerts: Alerts, clock: ManualClock, server: Any) -> Any:
    guard = Guard(
        Policy(daily_spend_usd="0.0001"),
        tenant_policies={"rich": Policy()},  # a tenant whose calls go through
        alerts=alerts,
        clock=clock,
    )
    return guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))


def _refuse(client: Any, tenant: str) -> None:
    with pytest.raises(BudgetExceeded):
        client.for_tenant(tenant).chat.completions.create(
            model="gpt-4o", messages=HELLO, max_tokens=100
        )


def test_a_webhook_gets_the_event_as_json(hook: Hook, clock: ManualClock, server: Any) -> None:
    alerts = Alerts([RefusalRule()], [Webhook(hook.url)])
    _refuse(_refusing_guard(alerts, clock, server), "u-1")
    assert alerts.flush(10)
    (body,) = hook.bodies
    assert body["rule"] == "refusal" and body["scope"] == "u-1" and body["tenant"] == "u-1"
    assert body["figures"]["limit"] == "daily_spend_usd"
    assert body["time"] == "2026-11-23T12:00:00+00:00"
    assert body["text"].startswith("u-1: refused a gpt-4o call on daily_spend_usd")
    assert alerts.stats.delivered == 1
    alerts.close()


def test_a_slack_webhook_gets_a_text_field_only(
    hook: Hook, clock: ManualClock, server: Any
) -> None:
    alerts = Alerts([RefusalRule()], [Webhook(hook.url, slack=True)])
    _refuse(_refusing_guard(alerts, clock, server), "u-1")
    assert alerts.flush(10)
    (body,) = hook.bodies
    assert list(body) == ["text"] and "daily_spend_usd" in body["text"]
    alerts.close()


def test_a_slow_webhook_never_holds_a_call(hook: Hook, clock: ManualClock, server: Any) -> None:
    hook.hold.clear()  # the receiver answers nothing until told to
    alerts = Alerts([RefusalRule()], [Webhook(hook.url, timeout=30)])
    client = _refusing_guard(alerts, clock, server)
    _refuse(client, "u-1")
    assert hook.arrived.acquire(timeout=10)  # the webhook is in flight, held
    for tenant in ("u-2", "u-3"):  # calls go on meanwhile, and queue their alerts
        _refuse(client, tenant)
    reply = client.for_tenant("rich").chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    assert not hook.hold.is_set()  # all of the above ran while the webhook was held
    assert alerts.flush(0.05) is False  # and the alert is still on its way
    hook.hold.set()
    assert alerts.flush(10)
    assert sorted(b["scope"] for b in hook.bodies) == ["u-1", "u-2", "u-3"]
    assert alerts.stats.delivered == 3
    alerts.close()


def test_a_failing_webhook_is_retried_with_backoff(hook: Hook, clock: ManualClock) -> None:
    hook.answers = [500, 503]
    alerts = Alerts([RefusalRule()], [Webhook(hook.url)], attempts=3, backoff_seconds=0.001)
    alerts.bind(MemoryStore(clock=clock))
    alerts(_rejected(clock))
    assert alerts.flush(10)
    assert len(hook.bodies) == 3  # two failures, then delivered
    stats = alerts.stats
    assert (stats.delivered, stats.failed, stats.dropped_total) == (1, 0, 0)
    alerts.close()


def test_a_webhook_that_keeps_failing_is_dropped_and_counted(
    hook: Hook, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    hook.answers = [500] * 10
    alerts = Alerts([RefusalRule()], [Webhook(hook.url)], attempts=2, backoff_seconds=0.001)
    alerts.bind(MemoryStore(clock=clock))
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        alerts(_rejected(clock))
        assert alerts.flush(10)
    assert len(hook.bodies) == 2
    stats = alerts.stats
    assert (stats.delivered, stats.failed) == (0, 1)
    assert stats.dropped == {"delivery_failed": 1}
    assert "not delivered to webhook 127.0.0.1" in caplog.text
    assert "secret" not in caplog.text  # a Slack webhook's path is its secret
    alerts.close()


def test_a_webhook_that_is_down_fails_fast_and_the_call_goes_on(
    clock: ManualClock, server: Any
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alerts = Alerts([RefusalRule()], [Webhook(f"http://127.0.0.1:{port}/")], backoff_seconds=0.001)
    client = _refusing_guard(alerts, clock, server)
    _refuse(client, "u-1")
    assert alerts.flush(10)
    assert (alerts.stats.failed, alerts.stats.dropped) == (1, {"delivery_failed": 1})
    alerts.close()


def test_a_full_queue_drops_and_counts(clock: ManualClock, server: Any) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(event: AlertEvent) -> None:
        started.set()
        release.wait(30)

    alerts = Alerts([RefusalRule()], [stuck], queue_size=1)
    client = _refusing_guard(alerts, clock, server)
    _refuse(client, "u-0")
    assert started.wait(10)  # the destination holds the first event
    for n in range(1, 6):
        _refuse(client, f"u-{n}")  # each call returns at once, whatever the queues do
    assert not release.is_set()
    release.set()
    assert alerts.flush(10)
    stats = alerts.stats
    assert stats.fired + stats.dropped.get("records", 0) == 6
    assert stats.dropped_total >= 1
    assert stats.delivered + stats.dropped_total - stats.dropped.get("records", 0) == stats.fired
    alerts.close()


def test_the_log_destination(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts([RefusalRule()], [LogDestination()])
    alerts.bind(MemoryStore(clock=clock))
    with caplog.at_level(logging.WARNING, logger="guardrail.alerts"):
        alerts(_rejected(clock))
        assert alerts.flush(10)
    (logged,) = [r for r in caplog.records if r.name == "guardrail.alerts"]
    text, payload = logged.getMessage().split(" {", 1)
    assert text.startswith("u-1: refused")
    assert json.loads("{" + payload)["rule"] == "refusal"
    alerts.close()


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError):
        Webhook("ftp://example.invalid/")
    with pytest.raises(ConfigurationError):
        Webhook("https://example.invalid/", timeout=0)
    with pytest.raises(ConfigurationError):
        Alerts(queue_size=0)
    with pytest.raises(ConfigurationError):
        Alerts(rules=["refusal"])  # type: ignore[list-item]


def _rejected(clock: ManualClock) -> Any:

    refusal = Refusal("budget", "daily_spend_usd", "u-1", Decimal("0.5"), Decimal(1), "USD")
    return UsageRecord(
        tenant="u-1",
        scopes=("u-1",),
        model="gpt-4o",
        requested_model="gpt-4o",
        outcome="rejected",
        refusal=refusal,
        timestamp=clock(),
    )


def test_alerts_from_a_configuration(hook: Hook, clock: ManualClock) -> None:
    from guardrail.observe import SpendAnomalyRule, SpendThresholdRule, alerts_from_config

    alerts = alerts_from_config(
        {
            "rules": {
                "refusal": {"every": "day"},
                "spend_anomaly": {"factor": 3, "min_usd": "5"},
                "spend_threshold": {"shares": [0.9]},
            },
            "destinations": [
                {"type": "webhook", "url": hook.url, "slack": True, "timeout": 2},
                {"type": "log", "level": "error"},
            ],
            "attempts": 1,
        }
    )
    refusal, anomaly, threshold = alerts.rules
    assert refusal == RefusalRule(every="day")
    assert anomaly == SpendAnomalyRule(factor=3, min_usd=Decimal(5))
    assert threshold == SpendThresholdRule(shares=(0.9,))
    alerts.bind(MemoryStore(clock=clock))
    alerts(_rejected(clock))
    assert alerts.flush(10)
    assert [list(b) for b in hook.bodies] == [["text"]]
    assert len(alerts_from_config({}).rules) == 7
    for bad in (
        {"rules": {"nope": {}}},
        {"rules": {"refusal": {"share": 1}}},
        {"destinations": [{"type": "pager"}]},
        {"destinations": [{"type": "webhook"}]},
        {"colour": "red"},
    ):
        with pytest.raises(ConfigurationError):
            alerts_from_config(bad)
    alerts.close()
