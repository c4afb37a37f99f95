"""Guarded ``OpenAI`` / ``AsyncOpenAI`` clients (see :mod:`.client`)."""

from guardrail.providers.openai.client import GuardedOpenAI, OpenAIAdapter

__all__ = ["GuardedOpenAI", "OpenAIAdapter"]
