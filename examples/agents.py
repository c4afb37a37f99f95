"""An openai-agents agent with a function tool, under a per-user daily cap.

The agent's model calls go through a guarded ``AsyncOpenAI``: each turn of its tool loop
is counted, reserved against the user's cap, sent with guardrail's bounded retries and
settled at what it cost. Once the cap is spent, the next run is refused before anything
is sent (``BudgetExceeded``), and other users are unaffected.

Offline: the real SDK and the real Agents SDK talk to guardrail's fake OpenAI server on a
loopback port, so no API key is needed and nothing is billed. Needs openai-agents
(``pip install openai-agents``; it is not a guardrail dependency).

    python examples/agents.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

# This file is named like the package it uses: `python examples/agents.py` puts examples/
# first on the path, where `import agents` would find this file. Take it off.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

from agents import (  # noqa: E402
    Agent,
    OpenAIProvider,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI  # noqa: E402

import guardrail  # noqa: E402
from guardrail.testing import FakeOpenAIServer, ToolCall  # noqa: E402

CITIES = {"Oslo": "4°C and snowing", "Lisbon": "19°C and sunny", "Nairobi": "24°C, clouds"}


@function_tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return CITIES.get(city, "unknown")


def fake_model(request: dict[str, Any]) -> Any:
    """What the fake server answers: call the tool for the city asked about, then answer
    with what it returned (the real model's job, played offline)."""
    items = [i for i in request["input"] if isinstance(i, dict)]
    outputs = [i["output"] for i in items if i.get("type") == "function_call_output"]
    if outputs:
        return f"It is {outputs[-1]}."
    asked = json.dumps(items)
    city = next((c for c in CITIES if c in asked), "Oslo")
    return [ToolCall("weather", {"city": city})]


async def main() -> None:
    set_tracing_disabled(True)  # offline: no trace uploads
    logging.getLogger("openai.agents").setLevel(logging.CRITICAL)  # it logs each refusal too
    with FakeOpenAIServer(reply=fake_model) as server:
        cap = Decimal("0.005")
        guard = guardrail.Guard(
            policy=guardrail.Policy(
                daily_spend_usd=cap,  # per user, per calendar day (UTC)
                default_output_tokens=200,  # reserved (and sent as the bound) per model call
            )
        )
        client = guard.wrap(AsyncOpenAI(base_url=server.base_url, api_key="offline"))
        agent = Agent(
            name="forecaster",
            instructions="Answer weather questions with the weather tool.",
            tools=[weather],
            model="gpt-4o",
        )

        def for_user(user: str) -> RunConfig:
            """The agent's model calls, charged to ``user``."""
            return RunConfig(model_provider=OpenAIProvider(openai_client=client.for_tenant(user)))

        questions = ["Weather in Oslo?", "And in Lisbon?", "Nairobi?"] * 4
        for n, question in enumerate(questions, 1):
            try:
                result = await Runner.run(agent, question, run_config=for_user("user-42"))
            except guardrail.BudgetExceeded as refused:
                print(f"run {n}: refused before sending: {refused}")
                break
            spent = guard.usage("user-42").spent_usd
            print(f"run {n}: {question} -> {result.final_output}  (user-42: ${spent} of ${cap})")

        usage = guard.usage("user-42")
        print(
            f"user-42 today: ${usage.spent_usd} spent, {usage.requests} model calls, "
            f"{usage.input_tokens} input + {usage.output_tokens} output tokens; "
            f"the fake server received {len(server.requests)} requests"
        )
        other = await Runner.run(agent, "Weather in Lisbon?", run_config=for_user("user-7"))
        print(f"user-7 still gets answers: {other.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
