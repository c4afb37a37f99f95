"""guardrail: hard limits around LLM calls.

Wrap a client once; every chat completion is then counted exactly, fitted to the
model's window, reserved against the tenant's budgets, sent with one bounded retry
policy and settled with the provider's actual usage.
"""

from guardrail._clock import ManualClock
from guardrail.errors import (
    BudgetExceeded,
    ConfigurationError,
    ContextWindowExceeded,
    GuardrailError,
    InvalidRequestError,
    InvalidTenantError,
    LoopDetected,
    PriceUnavailable,
    StoreUnavailable,
    UnknownModelError,
)
from guardrail.guard import Guard, wrap
from guardrail.models import ModelInfo, list_models, model_info, register_model
from guardrail.policy import Policy
from guardrail.pricing import TokenUsage, estimate_cost, usage_cost
from guardrail.sinks import JsonLinesSink, UsageRecord
from guardrail.stores.base import Store, UsageSummary
from guardrail.stores.memory import MemoryStore
from guardrail.tokens import count_messages, count_text
from guardrail.trimming import TrimResult, fit_messages, trim_messages

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "ConfigurationError",
    "ContextWindowExceeded",
    "Guard",
    "GuardrailError",
    "InvalidRequestError",
    "InvalidTenantError",
    "JsonLinesSink",
    "LoopDetected",
    "ManualClock",
    "MemoryStore",
    "ModelInfo",
    "Policy",
    "PriceUnavailable",
    "Store",
    "StoreUnavailable",
    "TokenUsage",
    "TrimResult",
    "UnknownModelError",
    "UsageRecord",
    "UsageSummary",
    "count_messages",
    "count_text",
    "estimate_cost",
    "fit_messages",
    "list_models",
    "model_info",
    "register_model",
    "trim_messages",
    "usage_cost",
    "wrap",
]
