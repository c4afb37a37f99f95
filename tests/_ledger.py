"""Helpers for the ledger tests: a few guarded calls by several tenants (one refused), and
the store's and the ledger's figures in one shape."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import openai
import pytest

from guardrail import BudgetExceeded, Guard, Policy
from guardrail.ledger import connect, report

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Hello there"}]
TODAY = date(2026, 11, 23)  # the conftest clock's day


def calls(server: Any, store: Any, sink: Any, **policies: Any) -> Guard:
    """Guarded calls by three tenants (two under one parent), one of them refused."""
    server.reply = "word " * 50
    guard = Guard(
        Policy(loop_limit=None),
        store=store,
        clock=store.now,  # the records' times on the store's clock
        sinks=[sink],
        tenant_policies={
            "acme": Policy(daily_spend_usd=Decimal("1")),
            "dave": Policy(daily_spend_usd=Decimal("0.0000001")),
            **policies,
        },
        global_policy=Policy(monthly_spend_usd=Decimal("100")),
    )
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    for tenant, parents, model in [
        ("alice", ["acme"], MODEL),
        ("bob", ["acme"], "gpt-4o-mini"),
        ("alice", ["acme"], MODEL),
        ("carol", [], "gpt-4o-mini"),
    ]:
        client.for_tenant(tenant, parents).chat.completions.create(
            model=model, messages=HELLO, max_tokens=60
        )
    with pytest.raises(BudgetExceeded):
        client.for_tenant("dave").chat.completions.create(model=MODEL, messages=HELLO)
    return guard


def store_rows(
    store: Any, day: date = TODAY
) -> dict[tuple[str, str, str], tuple[Decimal, int, int, int]]:
    return {
        (r.scope, r.model, r.day.isoformat()): (
            r.cost_usd,
            r.input_tokens,
            r.output_tokens,
            r.requests,
        )
        for r in store.usage_report(None, day, day)
    }


def ledger_rows(url: str) -> dict[tuple[str, str, str], tuple[Decimal, int, int, int]]:
    db = connect(url)
    try:
        return {
            row.key: (row.cost_usd, row.input_tokens, row.output_tokens, row.requests)
            for row in report(db, by=("tenant", "model", "day"), include_global=True)
        }
    finally:
        db.close()
