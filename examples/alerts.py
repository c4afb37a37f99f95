"""guardrail alerts: hear about the bleeding before the cap stops it.

Offline: the real ``openai`` SDK talks to guardrail's fake OpenAI server on a loopback
port, and alerts go to a local webhook receiver (Slack's format), to a Python callable
and to the log. A manual clock plays a week of normal use in a moment, then a bad day:

1. a call whose prompt fills 92% of the model's context window;
2. a runaway loop: the daily spend passes twice its 7-day average, then 50% and 80% of
   the cap, which then refuses the next call;
3. the same alerts again, from the same tenant in the same window: not sent twice.

With the ``[prometheus]`` extra installed, it also prints the Prometheus metrics a
gateway's ``GET /metrics`` would serve.

    python examples/alerts.py
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai import OpenAI

import guardrail
from guardrail.observe import AlertEvent, SpendAnomalyRule, Webhook, default_rules
from guardrail.testing import FakeOpenAIServer


def ask(report_tokens: int) -> list[dict[str, str]]:
    """A request to summarise a report of about ``report_tokens`` tokens."""
    report = "The nightly batch retried the export and the queue grew. " * (report_tokens // 12)
    return [{"role": "user", "content": f"Summarise in three lines:\n{report}"}]


class SlackLikeReceiver:
    """A local stand-in for a Slack incoming webhook: prints each message it gets."""

    def __init__(self) -> None:
        received = self.received = threading.Semaphore(0)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                print(f"    [slack] {body['text']}")
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                received.release()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/example"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    clock = guardrail.ManualClock(datetime(2026, 11, 16, 9, 0, tzinfo=UTC))
    receiver = SlackLikeReceiver()
    on_call: list[AlertEvent] = []
    # Every rule with its defaults, but a spend anomaly from $0.05 a day (not $1): this
    # example's tenant is small. LogDestination() would add the log.
    rules = [r for r in default_rules() if r.name != "spend_anomaly"]
    rules.append(SpendAnomalyRule(factor=2.0, days=7, min_usd=Decimal("0.05")))
    alerts = guardrail.Alerts(
        rules,
        destinations=[Webhook(receiver.url, slack=True), on_call.append],
        refresh_seconds=0,  # read the store's spend on every call (the default is 30 s)
    )
    prometheus = None
    try:
        from guardrail.observe import PrometheusMetrics

        prometheus = PrometheusMetrics()
        telemetry: Any = prometheus.telemetry(traces=False)
    except guardrail.ConfigurationError:
        telemetry = False  # pip install 'guardrail-limits[prometheus]' to see the metrics

    with FakeOpenAIServer(reply="Three lines, as asked.") as server:
        guard = guardrail.Guard(
            guardrail.Policy(daily_spend_usd="0.30", default_output_tokens=200, loop_limit=None),
            store=guardrail.MemoryStore(clock=clock),
            clock=clock,
            alerts=alerts,
            telemetry=telemetry,
        )
        client = guard.wrap(OpenAI(base_url=server.base_url, api_key="offline", max_retries=0))
        user = client.for_tenant("team-search")

        for _day in range(7):
            for _ in range(4):
                user.chat.completions.create(model="gpt-4o", messages=ask(3_000))
            clock.advance(86_400)
        assert alerts.flush(10)
        week = guard.usage_report(["team-search"], start=date(2026, 11, 16))
        average = sum(row.cost_usd for row in week) / 7
        print(f"a normal week: 4 calls a day, ${average:.4f} a day; {alerts.stats.fired} alerts")

        print("the bad day:")
        print("  1. one call whose prompt nearly fills gpt-4o's 128K window")
        user.chat.completions.create(model="gpt-4o-mini", messages=ask(118_000), max_tokens=50)
        assert alerts.flush(10)

        print("  2. a runaway retry loop resubmits a large prompt")
        calls = 0
        try:
            while calls < 1_000:
                user.chat.completions.create(model="gpt-4o", messages=ask(6_000))
                calls += 1
                assert alerts.flush(10)  # only so that the output reads in order
        except guardrail.BudgetExceeded as stop:
            print(f"    stopped by the cap after {calls} calls: {stop.limit}")
        assert alerts.flush(10)

        print("  3. the loop goes on: the same alerts are not sent again in their windows")
        for _ in range(3):
            with contextlib.suppress(guardrail.BudgetExceeded):
                user.chat.completions.create(model="gpt-4o", messages=ask(6_000))
        assert alerts.flush(10)

    stats = alerts.stats
    print(
        f"fired {stats.fired} alerts ({', '.join(e.rule for e in on_call)}), "
        f"suppressed {stats.suppressed} repeats, delivered {stats.delivered} "
        f"(2 destinations each), dropped {stats.dropped_total}"
    )
    spent = guard.usage("team-search").spent_usd
    print(f"spent today: ${spent.quantize(Decimal('0.0001'))} of a $0.30 cap")
    if prometheus is not None:
        print("what GET /metrics serves (an excerpt):")
        for line in prometheus.render().decode().splitlines():
            if line.startswith(("guardrail_refusals_total", "guardrail_spend_usd_total")) or (
                line.startswith("gen_ai_client_token_usage_count")
            ):
                print(f"  {line}")
        prometheus.shutdown()
    alerts.close()
    receiver.close()


if __name__ == "__main__":
    main()
