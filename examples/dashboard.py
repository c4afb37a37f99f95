"""guardrail's ledger and dashboard: two weeks of guarded calls, every one in a SQLite ledger,
then the reports and the dashboard page. Offline: the real ``openai`` SDK talks to
guardrail's fake OpenAI server on a loopback port; a manual clock plays the two weeks in
a moment.

    python examples/dashboard.py                 # writes ledger.db and dashboard.html
    python examples/dashboard.py --out DIR       # ...into DIR (default: a temporary folder)

Then look at the same ledger from the command line:

    guardrail usage --ledger sqlite:///DIR/ledger.db --since 2026-01-01 --by tenant
    guardrail dashboard --ledger sqlite:///DIR/ledger.db      # needs the [server] extra
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from openai import OpenAI

import guardrail
from guardrail.dashboard import collect, render
from guardrail.ledger import LedgerSink, connect, report
from guardrail.ledger.reports import count_records
from guardrail.observe import Alerts
from guardrail.testing import FakeOpenAIServer

# Who calls, under which organisation, how much of what per day.
TEAMS = [
    ("search", ["acme"], "gpt-4o-mini", 40),
    ("support-bot", ["acme"], "gpt-4o", 12),
    ("nightly-batch", [], "gpt-4o", 6),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write ledger.db and dashboard.html")
    out = parser.parse_args().out or Path(tempfile.mkdtemp(prefix="guardrail-dashboard-"))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("ledger.db*"):  # a fresh two weeks each run
        old.unlink()
    ledger_url = f"sqlite:///{(out / 'ledger.db').resolve()}"

    today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    clock = guardrail.ManualClock(today - timedelta(days=13))
    store = guardrail.MemoryStore(clock=clock)
    ledger = LedgerSink(ledger_url, spool_path=out / "ledger-spool.jsonl")
    alerts = Alerts(destinations=[ledger.alert])  # every alert fired, kept in the ledger
    guard = guardrail.Guard(
        guardrail.Policy(max_output_tokens=400, loop_limit=None),
        store=store,
        clock=clock,
        sinks=[ledger],
        alerts=alerts,
        tenant_policies={
            "acme": guardrail.Policy(daily_spend_usd=Decimal("0.05")),
            "support-bot": guardrail.Policy(daily_spend_usd=Decimal("0.02")),
            "nightly-batch": guardrail.Policy(
                daily_spend_usd=Decimal("0.004"), monthly_spend_usd=Decimal("0.5")
            ),
        },
    )
    refused = 0
    with FakeOpenAIServer() as server:
        client = guard.wrap(OpenAI(base_url=server.base_url, api_key="not-needed"))
        for day in range(14):
            for team, parents, model, calls in TEAMS:
                tenant = client.for_tenant(team, parents)
                busy = calls + (day * 3 if team == "support-bot" else 0)  # a growing bot
                for n in range(busy):
                    server.reply = "word " * (20 + (n * 37 + day * 11) % 180)
                    try:
                        tenant.chat.completions.create(
                            model=model,
                            messages=[{"role": "user", "content": f"Question {n} of day {day}"}],
                            max_tokens=300,
                        )
                    except guardrail.BudgetExceeded:
                        refused += 1
                        break  # the cap held: this team is done for the day
                clock.advance(600)
            clock.advance(86_400 - 600 * len(TEAMS))
    alerts.close()
    ledger.close()

    db = connect(ledger_url)
    print(f"ledger: {ledger_url} ({count_records(db)} calls recorded, {refused} refused)")
    for row in report(db, by=("tenant",)):
        print(f"  {row.key[0]:<14} ${row.cost_usd:<12} {row.requests:>5} calls")
    page = out / "dashboard.html"
    last_day = clock() - 86_400 + 8 * 3600  # the afternoon of the last day played
    page.write_text(render(collect(db, store, now=last_day)), encoding="utf-8")
    db.close()
    print(f"dashboard: {page}")


if __name__ == "__main__":
    main()
