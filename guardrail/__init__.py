"""guardrail: hard limits around LLM calls."""

from guardrail.errors import (
    BudgetExceeded,
    ConfigurationError,
    ContextWindowExceeded,
    GuardrailError,
    InvalidRequestError,
    InvalidTenantError,
    LoopDetected,
    StoreUnavailable,
    UnknownModelError,
)

__all__ = [
    "BudgetExceeded",
    "ConfigurationError",
    "ContextWindowExceeded",
    "GuardrailError",
    "InvalidRequestError",
    "InvalidTenantError",
    "LoopDetected",
    "StoreUnavailable",
    "UnknownModelError",
]
