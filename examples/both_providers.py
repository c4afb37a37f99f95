"""One tenant's daily budget shared by an OpenAI and an Anthropic client.

Offline by default: the real ``openai`` and ``anthropic`` SDKs talk to guardrail's fake
servers on loopback ports, so no API key is needed and nothing is billed. With both
``OPENAI_API_KEY`` and ``ANTHROPIC_API_KEY`` set, the same code calls the real APIs
(gpt-4o-mini and claude-haiku-4-5, a shared cap of one US cent).

    python examples/both_providers.py
"""

from __future__ import annotations

import os
from collections import defaultdict
from decimal import Decimal

from anthropic import Anthropic
from openai import OpenAI

import guardrail
from guardrail.testing import FakeAnthropicServer, FakeOpenAIServer

REPORT = (
    "Quarterly report. Revenue grew in every region, led by the new subscription tier; "
    "churn fell for the third quarter in a row while support tickets per customer dropped. "
) * 60


def main() -> None:
    online = bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("ANTHROPIC_API_KEY"))
    fake_openai = fake_anthropic = None
    if not online:
        fake_openai = FakeOpenAIServer(reply="Revenue grew everywhere.").start()
        fake_anthropic = FakeAnthropicServer(reply="Revenue grew; churn fell.").start()
    try:
        if fake_openai is not None and fake_anthropic is not None:
            openai_client = OpenAI(base_url=fake_openai.base_url, api_key="x")
            anthropic_client = Anthropic(base_url=fake_anthropic.base_url, api_key="x")
        else:
            openai_client, anthropic_client = OpenAI(), Anthropic()
        cap = Decimal("0.01") if online else Decimal("0.05")

        spent_by_model: dict[str, Decimal] = defaultdict(Decimal)

        def tally(record: guardrail.UsageRecord) -> None:  # a usage sink: one record per call
            spent_by_model[record.model] += record.cost_usd

        guard = guardrail.Guard(
            policy=guardrail.Policy(
                daily_spend_usd=cap,  # one budget per tenant, whichever provider it calls
                default_output_tokens=200,  # also Anthropic's required max_tokens
                loop_limit=None,  # let the loop below run into the budget
            ),
            sinks=[tally],
        )
        gpt = guard.wrap(openai_client).for_tenant("team-a")
        claude = guard.wrap(anthropic_client).for_tenant("team-a")

        question = "Summarise this report in one sentence:\n" + REPORT
        calls = 0
        try:
            while calls < 1000:
                gpt.chat.completions.create(
                    model="gpt-4o-mini" if online else "gpt-4o",
                    messages=[{"role": "user", "content": question}],
                )
                calls += 1
                claude.messages.create(  # no max_tokens: the policy's default is sent
                    model="claude-haiku-4-5",
                    system="You summarise documents.",
                    messages=[{"role": "user", "content": question}],
                )
                calls += 1
        except guardrail.BudgetExceeded as stop:
            print(f"stopped after {calls} calls: {stop}")

        usage = guard.usage("team-a")
        print(f"team-a today: ${usage.spent_usd} of ${cap} in {usage.requests} requests")
        for model, spent in sorted(spent_by_model.items()):
            print(f"  {model:>18}: ${spent}")
        if fake_openai is not None and fake_anthropic is not None:
            print(
                f"the fake servers received {len(fake_openai.chat_requests)} chat completions, "
                f"{len(fake_anthropic.message_requests)} messages and "
                f"{len(fake_anthropic.count_requests)} token counts (identical prompts are "
                "counted once)"
            )
    finally:
        for server in (fake_openai, fake_anthropic):
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
