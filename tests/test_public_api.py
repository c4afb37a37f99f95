"""The public surface: names, errors, policies and sinks a user relies on."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import openai
import pytest

import guardrail
from guardrail import ConfigurationError, Guard, Policy


def test_all_matches_the_public_names() -> None:
    public = {n for n in dir(guardrail) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(guardrail, n)).__name__ == "module"}
    assert set(guardrail.__all__) == public - modules
    assert guardrail.__all__ == sorted(guardrail.__all__)


def test_every_error_is_a_guardrail_error() -> None:
    for name in guardrail.errors.__all__:
        assert issubclass(getattr(guardrail, name), guardrail.GuardrailError)
    assert issubclass(guardrail.InvalidRequestError, ValueError)
    assert issubclass(guardrail.UnknownModelError, KeyError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"daily_spend_usd": -1},
        {"daily_spend_usd": "lots"},
        {"daily_spend_usd": float("inf")},
        {"max_attempts": 0},
        {"max_input_tokens": 1.5},
        {"max_retry_seconds": 0},
        {"output_over_cap": "truncate"},
        {"fallback_models": "gpt-4o-mini"},
        {"default_output_tokens": 500, "max_output_tokens": 100},
        {"tokens_per_minute": True},
    ],
)
def test_bad_policies_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_money_in_policies_is_decimal() -> None:
    assert Policy(daily_spend_usd=5).daily_spend_usd == Decimal(5)
    assert Policy(daily_spend_usd=0.1).daily_spend_usd == Decimal(
        "0.1"
    )  # not 0.1000000000000000055
    assert Policy(monthly_spend_usd="12.50").monthly_spend_usd == Decimal("12.50")


def test_guard_rejects_bad_settings() -> None:
    with pytest.raises(ConfigurationError):
        Guard(on_store_error="maybe")  # type: ignore[arg-type]
    with pytest.raises(guardrail.InvalidTenantError):
        Guard(default_tenant="no spaces allowed")
    with pytest.raises(ConfigurationError):
        Guard().wrap(object())


def test_tenant_policies_callable(server) -> None:
    def policies(scope: str) -> Policy | None:
        return Policy(daily_spend_usd=0) if scope.startswith("free-") else None

    guard = Guard(Policy(), tenant_policies=policies)
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    with pytest.raises(guardrail.BudgetExceeded):
        client.for_tenant("free-1").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    client.for_tenant("paid-1").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert guard.policy_for("free-1").daily_spend_usd == 0
    assert guard.policy_for("paid-1") is guard.policy


def test_usage_log_is_json_lines_without_prompt_content(server, caplog) -> None:
    guard = Guard(Policy())
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    with caplog.at_level(logging.INFO, logger="guardrail.usage"):
        client.for_tenant("logged").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "my secret question"}]
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "guardrail.usage"]
    record = json.loads(line)
    assert record["tenant"] == "logged" and record["outcome"] == "ok"
    assert Decimal(record["cost_usd"]) > 0
    assert "secret" not in line


def test_a_failing_sink_never_breaks_the_call(server, caplog) -> None:
    def broken(record: guardrail.UsageRecord) -> None:
        raise RuntimeError("sink down")

    seen: list[guardrail.UsageRecord] = []
    guard = Guard(Policy(), sinks=[broken, seen.append])
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t"))
    out = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.choices and len(seen) == 1
    assert any("sink" in r.getMessage() for r in caplog.records)


def test_wrap_shortcut(server) -> None:
    client = guardrail.wrap(
        openai.OpenAI(base_url=server.base_url, api_key="t"), Policy(daily_spend_usd=1)
    )
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert client._guard.usage("default").requests == 1


# The module paths the docs named before the layout (guardrail._moved answers for them).
OLD_PATHS = {
    "guardrail.tokens": ["count_messages", "count_text", "TokenCounter", "CLAUDE_SAFETY_MARGIN"],
    "guardrail.budget": ["allocate", "BudgetPart", "TokenBudget", "PromptBuilder", "Prompt"],
    "guardrail.memory": ["ConversationMemory", "RedisConversationMemory"],
    "guardrail.trimming": ["trim_messages", "fit_messages", "TrimResult"],
    "guardrail.truncation": ["truncate_text"],
    "guardrail.packing": ["pack_documents", "Document"],
    "guardrail.models": ["model_info", "list_models", "register_model", "ModelInfo"],
    "guardrail.pricing": ["estimate_cost", "usage_cost", "TokenUsage"],
    "guardrail.sinks": ["UsageRecord", "JsonLinesSink"],
    "guardrail.images": ["tokens_for_size"],
    "guardrail.openai": ["GuardedOpenAI"],
    "guardrail.anthropic": ["GuardedAnthropic", "PDF_PAGE_TOKENS", "TokenCountCache"],
}


@pytest.mark.parametrize("path", sorted(OLD_PATHS))
def test_old_module_paths_keep_working_with_a_warning(path: str) -> None:
    import importlib
    import sys

    from guardrail._moved import MOVED

    sys.modules.pop(path, None)
    with pytest.warns(DeprecationWarning, match=f"{path} is now {MOVED[path]}"):
        module = importlib.import_module(path)
    for name in OLD_PATHS[path]:
        assert getattr(module, name) is getattr(importlib.import_module(MOVED[path]), name)
    assert set(OLD_PATHS) == set(MOVED)


def test_an_unknown_module_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        __import__("guardrail.no_such_module")
