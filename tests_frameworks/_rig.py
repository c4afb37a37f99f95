"""What the framework tests share: a guard with guarded clients on one fake server."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai

from guardrail import Guard, Policy, UsageRecord
from guardrail.testing import FakeOpenAIServer

MODEL = "gpt-4o"
TINY = Policy(daily_spend_usd=Decimal("0.0001"))
"""A cap no gpt-4o call fits (its worst case is its whole output at the output price)."""


@dataclass
class Rig:
    """A guard and its guarded clients (sync and async) on one fake server."""

    server: FakeOpenAIServer
    guard: Guard
    client: Any
    aclient: Any
    records: list[UsageRecord] = field(default_factory=list)

    @property
    def spent(self) -> Decimal:
        return self.guard.usage("default").spent_usd

    def settled(self, calls: int) -> None:
        """``calls`` paid calls, each recorded and settled at a real cost, none still held."""
        usage = self.guard.usage("default")
        assert usage.reserved_usd == 0
        assert usage.requests == calls == len(self.records)
        assert all(r.cost_usd > 0 and r.input_tokens > 0 for r in self.records)
        assert usage.spent_usd == sum(r.cost_usd for r in self.records)


def make_rig(server: FakeOpenAIServer, policy: Policy | None = None, **guard: Any) -> Rig:
    records: list[UsageRecord] = []
    g = Guard(policy or Policy(daily_spend_usd=1), sinks=[records.append], **guard)
    client = g.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    aclient = g.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="t"))
    return Rig(server, g, client, aclient, records)
