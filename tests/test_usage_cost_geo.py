"""guardrail.usage_cost(model, response.usage) on an Anthropic usage that reports US-only
inference (usage.inference_geo="us") prices it at the standard rates, while the guard
settles the very same usage at 1.1x: the public helper and the settlement read Anthropic
usage with two different readers (genai-prices' extractor in pricing.usage_from_sdk vs
providers/anthropic/usage.read_usage), and only the second knows inference_geo."""

from __future__ import annotations

import anthropic
import pytest

import guardrail
from guardrail import Guard, Policy
from guardrail.testing import FakeAnthropicServer

MODEL = "claude-opus-4-7"


def test_usage_cost_agrees_with_settlement_on_us_inference() -> None:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(
        Policy(daily_spend_usd=5, loop_limit=None, max_attempts=1), sinks=[records.append]
    )
    with FakeAnthropicServer(prompt_tokens=10_000, output_tokens=1_000, inference_geo="us") as srv:
        raw = anthropic.Anthropic(base_url=srv.base_url, api_key="t", max_retries=0, timeout=30)
        claude = guard.wrap(raw).for_tenant("t")
        response = claude.messages.create(
            model=MODEL,
            max_tokens=1_000,
            messages=[{"role": "user", "content": "Hello there"}],
            extra_body={"inference_geo": "us"},
        )
    assert response.usage.inference_geo == "us"
    settled = records[-1].cost_usd
    # The guard charged the premium ...
    assert settled > guardrail.estimate_cost(MODEL, 10_000, 1_000)
    # ... the documented helper for "the cost of an SDK response's usage" does not.
    assert guardrail.usage_cost(MODEL, response.usage) == settled


def test_usage_cost_adds_the_passes_the_top_level_leaves_out() -> None:
    usage = {
        "input_tokens": 100,
        "output_tokens": 10,
        "iterations": [
            {"type": "message", "input_tokens": 100, "output_tokens": 10},
            {"type": "compaction", "input_tokens": 1_000, "output_tokens": 50},
        ],
    }
    assert guardrail.usage_cost(MODEL, usage) == guardrail.estimate_cost(MODEL, 1_100, 60)


def test_usage_cost_of_an_unreadable_anthropic_usage_is_a_clear_error() -> None:
    with pytest.raises(guardrail.InvalidRequestError, match="malformed anthropic usage"):
        guardrail.usage_cost(MODEL, {"output_tokens": 10})
