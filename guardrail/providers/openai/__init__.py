"""Guarded ``OpenAI`` / ``AsyncOpenAI`` clients: :mod:`.client` is the guarded client,
:mod:`.chat`, :mod:`.responses` and :mod:`.embeddings` the adapters of its endpoints.

``GuardedOpenAI`` and ``GuardedAsyncOpenAI`` are the guarded subclasses of ``openai.OpenAI``
and ``openai.AsyncOpenAI`` (for ``isinstance`` checks and type hints)."""

from typing import Any

from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.providers.openai.client import guarded_openai_class
from guardrail.providers.openai.embeddings import EmbeddingsAdapter
from guardrail.providers.openai.responses import ResponsesAdapter

__all__ = [
    "EmbeddingsAdapter",
    "GuardedAsyncOpenAI",
    "GuardedOpenAI",
    "OpenAIAdapter",
    "ResponsesAdapter",
    "guarded_openai_class",
]


def __getattr__(name: str) -> Any:  # the SDK is imported only when asked for
    if name in ("GuardedOpenAI", "GuardedAsyncOpenAI"):
        import openai

        return guarded_openai_class(
            openai.OpenAI if name == "GuardedOpenAI" else openai.AsyncOpenAI
        )
    raise AttributeError(name)
