"""guardrail: hard limits around LLM calls.

Wrap a client once; every chat completion is then counted exactly, fitted to the
model's window, reserved against the tenant's budgets, sent with one bounded retry
policy and settled with the provider's actual usage.
"""

from guardrail._clock import ManualClock
from guardrail._engine import TrimEvent
from guardrail.budget import (
    Allocation,
    BudgetPart,
    PartAllocation,
    PartReport,
    Prompt,
    PromptBuilder,
    TokenBudget,
    allocate,
)
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
from guardrail.memory import ConversationMemory, RedisConversationMemory
from guardrail.models import ModelInfo, list_models, model_info, register_model
from guardrail.packing import Document, PackResult, pack_documents
from guardrail.policy import Policy
from guardrail.pricing import TokenUsage, estimate_cost, usage_cost
from guardrail.sinks import JsonLinesSink, UsageRecord
from guardrail.stores.base import Store, UsageRow, UsageSummary
from guardrail.stores.memory import MemoryStore
from guardrail.stores.redis import RedisStore
from guardrail.tokens import count_messages, count_text
from guardrail.trimming import TrimResult, fit_messages, trim_messages
from guardrail.truncation import truncate_text

__version__ = "0.1.0"

__all__ = [
    "Allocation",
    "BudgetExceeded",
    "BudgetPart",
    "ConfigurationError",
    "ContextWindowExceeded",
    "ConversationMemory",
    "Document",
    "Guard",
    "GuardrailError",
    "InvalidRequestError",
    "InvalidTenantError",
    "JsonLinesSink",
    "LoopDetected",
    "ManualClock",
    "MemoryStore",
    "ModelInfo",
    "PackResult",
    "PartAllocation",
    "PartReport",
    "Policy",
    "PriceUnavailable",
    "Prompt",
    "PromptBuilder",
    "RedisConversationMemory",
    "RedisStore",
    "Store",
    "StoreUnavailable",
    "TokenBudget",
    "TokenUsage",
    "TrimEvent",
    "TrimResult",
    "UnknownModelError",
    "UsageRecord",
    "UsageRow",
    "UsageSummary",
    "allocate",
    "count_messages",
    "count_text",
    "estimate_cost",
    "fit_messages",
    "list_models",
    "model_info",
    "pack_documents",
    "register_model",
    "trim_messages",
    "truncate_text",
    "usage_cost",
    "wrap",
]
