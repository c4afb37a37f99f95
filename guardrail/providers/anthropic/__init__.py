"""Guarded ``Anthropic`` / ``AsyncAnthropic`` clients (see :mod:`.client`)."""

from guardrail.providers.anthropic.client import (
    DOCUMENT_ASSUMED_PAGES,
    NONSTREAMING_MAX_TOKENS,
    PDF_PAGE_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    TOKENS_PER_MESSAGE,
    TOOL_USE_SYSTEM_PROMPT_TOKENS,
    AnthropicAdapter,
    GuardedAnthropic,
    TokenCountCache,
)

__all__ = [
    "DOCUMENT_ASSUMED_PAGES",
    "NONSTREAMING_MAX_TOKENS",
    "PDF_PAGE_TOKENS",
    "REQUEST_OVERHEAD_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOOL_USE_SYSTEM_PROMPT_TOKENS",
    "AnthropicAdapter",
    "GuardedAnthropic",
    "TokenCountCache",
]
