"""Guarded ``Anthropic`` / ``AsyncAnthropic`` clients.

:mod:`.client` is the guarded client, :mod:`.adapter` reads and rewrites Messages API
calls for the engine (:mod:`.bounds`: what a request may bill beyond what it carries, and
what guardrail refuses under a money limit; :mod:`.usage`: reading usage),
:mod:`.exact_count` asks ``messages.count_tokens``; the local estimate's rules are in
:mod:`guardrail.counting.claude`.
"""

from typing import Any

from guardrail.counting.claude import (
    PDF_PAGE_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    TOKENS_PER_MESSAGE,
    TOOL_USE_SYSTEM_PROMPT_TOKENS,
)
from guardrail.providers.anthropic.adapter import NONSTREAMING_MAX_TOKENS, AnthropicAdapter
from guardrail.providers.anthropic.bounds import SERVER_LOOP_PASSES, WEB_SEARCH_ASSUMED_USES
from guardrail.providers.anthropic.client import guarded_anthropic_class, wrap_anthropic
from guardrail.providers.anthropic.exact_count import COUNT_TIMEOUT_SECONDS, TokenCountCache

__all__ = [
    "COUNT_TIMEOUT_SECONDS",
    "NONSTREAMING_MAX_TOKENS",
    "PDF_PAGE_TOKENS",
    "REQUEST_OVERHEAD_TOKENS",
    "SERVER_LOOP_PASSES",
    "TOKENS_PER_MESSAGE",
    "TOOL_USE_SYSTEM_PROMPT_TOKENS",
    "WEB_SEARCH_ASSUMED_USES",
    "AnthropicAdapter",
    "GuardedAnthropic",
    "GuardedAsyncAnthropic",
    "TokenCountCache",
    "guarded_anthropic_class",
    "wrap_anthropic",
]


def __getattr__(name: str) -> Any:  # the SDK is imported only when asked for
    if name in ("GuardedAnthropic", "GuardedAsyncAnthropic"):
        import anthropic

        base = anthropic.Anthropic if name == "GuardedAnthropic" else anthropic.AsyncAnthropic
        return guarded_anthropic_class(base)
    raise AttributeError(name)
