"""guardrail quickstart: a runaway loop stopped by a per-user daily cap.

Offline by default: the real ``openai`` SDK talks to guardrail's fake OpenAI server on a
loopback port, so no API key is needed and nothing is billed. With ``OPENAI_API_KEY``
set, the same code runs against OpenAI (gpt-4o-mini, a cap of one US cent).

    python examples/quickstart.py
"""

from __future__ import annotations

import os
from decimal import Decimal

from openai import OpenAI

import guardrail
from guardrail.testing import FakeOpenAIServer

PARAGRAPH = (
    "Quarterly report. Revenue grew in every region, led by the new subscription tier; "
    "churn fell for the third quarter in a row while support tickets per customer dropped. "
)


def main() -> None:
    online = bool(os.environ.get("OPENAI_API_KEY"))
    server = None if online else FakeOpenAIServer(reply="The report says revenue grew.").start()
    try:
        raw_client = OpenAI() if server is None else OpenAI(base_url=server.base_url, api_key="x")
        model = "gpt-4o-mini" if online else "gpt-4o"
        cap = Decimal("0.01") if online else Decimal("0.25")

        guard = guardrail.Guard(
            policy=guardrail.Policy(
                daily_spend_usd=cap,  # per tenant, per calendar day (UTC)
                default_output_tokens=300,  # reserved and enforced when the caller sets none
                max_attempts=3,  # the one bounded retry policy
                loop_limit=None,  # let the runaway loop run into the budget, not the loop guard
            )
        )
        client = guard.wrap(raw_client)  # the one line: everything below is plain SDK code
        user = client.for_tenant("user-42")

        prompt = [
            {"role": "system", "content": "You summarise documents."},
            {"role": "user", "content": "Summarise this:\n" + PARAGRAPH * 400},
        ]
        tokens = guardrail.count_messages(prompt, model)
        worst_case = guardrail.estimate_cost(model, tokens, 300)
        print(f"prompt: {tokens} tokens, worst case per call ${worst_case} on {model}")

        # The bug that burns money: a loop that resubmits the same large prompt forever.
        calls = 0
        try:
            while calls < 1000:
                user.chat.completions.create(model=model, messages=prompt)
                calls += 1
        except guardrail.BudgetExceeded as stop:
            print(f"stopped after {calls} calls: {stop}")

        usage = guard.usage("user-42")
        print(
            f"user-42 today: ${usage.spent_usd} spent of ${cap}, {usage.requests} requests, "
            f"{usage.input_tokens} input + {usage.output_tokens} output tokens"
        )
        if server is not None:
            print(f"the fake server received {len(server.chat_requests)} requests")

        # Another tenant is unaffected by user-42's cap.
        other = client.for_tenant("user-7").chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello!"}]
        )
        print(f"user-7 still gets answers: {other.choices[0].message.content!r}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
