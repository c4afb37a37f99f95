"""Guarded ``OpenAI`` / ``AsyncOpenAI`` clients: :mod:`.client` is the guarded client,
:mod:`.chat` the Chat Completions adapter."""

from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.providers.openai.client import GuardedOpenAI

__all__ = ["GuardedOpenAI", "OpenAIAdapter"]
