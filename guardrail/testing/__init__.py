"""Fakes for tests: real HTTP servers on loopback ports that speak OpenAI's and Anthropic's
APIs, for the real SDKs to talk to (see :mod:`guardrail.testing.openai` and
:mod:`guardrail.testing.anthropic`), and :class:`guardrail.ManualClock`.

Owns: the fake servers and their shared HTTP plumbing (:mod:`guardrail.testing.http`).
May import: counting (the fakes count tokens the way the providers bill them). Nothing in
the product imports it.
"""

from guardrail.testing.anthropic import FakeAnthropicServer
from guardrail.testing.openai import (
    DEFAULT_MODELS,
    DEFAULT_REPLY,
    EMBEDDING_DIMENSIONS,
    DelayScript,
    DisconnectScript,
    ErrorScript,
    FakeOpenAIServer,
    HoldScript,
    ReceivedRequest,
    ReplyFunc,
    Script,
    StreamCutScript,
    TokenCountFunc,
    ToolCall,
    default_prompt_tokens,
)
from guardrail.testing.openai_responses import ResponseFailedScript

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "EMBEDDING_DIMENSIONS",
    "DelayScript",
    "DisconnectScript",
    "ErrorScript",
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "HoldScript",
    "ReceivedRequest",
    "ReplyFunc",
    "ResponseFailedScript",
    "Script",
    "StreamCutScript",
    "TokenCountFunc",
    "ToolCall",
    "default_prompt_tokens",
]
