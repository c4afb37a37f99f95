"""guardrail: hard limits around LLM calls.

Wrap a client once; every chat completion is then counted exactly, fitted to the
model's window, reserved against the tenant's budgets, sent with one bounded retry
policy and settled with the provider's actual usage.
"""

from guardrail import _moved
from guardrail._clock import ManualClock
from guardrail.catalog.models import ModelInfo, list_models, model_info, register_model
from guardrail.catalog.pricing import TokenUsage, estimate_cost
from guardrail.counting.messages import count_messages, count_text
from guardrail.engine.plan import TrimEvent
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
    UnboundedInput,
    UnknownModelError,
    UnmeteredCall,
    UnpricedOption,
)
from guardrail.guard import Guard, wrap
from guardrail.observe.alerts import Alerts
from guardrail.observe.delivery import Webhook
from guardrail.observe.rules import AlertEvent
from guardrail.observe.sinks import JsonLinesSink, UsageRecord
from guardrail.observe.telemetry import Telemetry
from guardrail.policy import Policy
from guardrail.prompt.allocation import (
    Allocation,
    BudgetPart,
    PartAllocation,
    TokenBudget,
    allocate,
)
from guardrail.prompt.builder import PartReport, Prompt, PromptBuilder
from guardrail.prompt.conversation import ConversationMemory, RedisConversationMemory
from guardrail.prompt.packing import Document, PackResult, pack_documents
from guardrail.prompt.trimming import TrimResult, fit_messages, trim_messages
from guardrail.prompt.truncation import truncate_text
from guardrail.providers.costs import usage_cost
from guardrail.stores.base import Store, UsageRow, UsageSummary
from guardrail.stores.memory import MemoryStore
from guardrail.stores.redis import RedisStore
from guardrail.tenancy import TenantFromRequest

_moved.install()

__version__ = "0.1.0"

__all__ = [
    "AlertEvent",
    "Alerts",
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
    "Telemetry",
    "TenantFromRequest",
    "TokenBudget",
    "TokenUsage",
    "TrimEvent",
    "TrimResult",
    "UnboundedInput",
    "UnknownModelError",
    "UnmeteredCall",
    "UnpricedOption",
    "UsageRecord",
    "UsageRow",
    "UsageSummary",
    "Webhook",
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
