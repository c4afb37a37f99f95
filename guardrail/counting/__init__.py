"""Exact prompt-token counting: text, chat messages, tools, images, audio.

Owns: the OpenAI cookbook's rules (:mod:`.messages`, :mod:`.tools`), the providers'
published image rules (:mod:`.vision`) and the image parts they apply to (:mod:`.images`,
:mod:`.media`), the per-encoding string caches (:mod:`.text`), and the local estimate of
a Claude prompt (:mod:`.claude`).
May import: catalog (a model's encoding and constants), errors.
"""

from guardrail.counting.media import AUDIO_TOKENS_PER_SECOND
from guardrail.counting.messages import (
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_TOOL_CALL,
    TokenCounter,
    clear_caches,
    count_messages,
    count_text,
    counter_for,
    field_of,
)
from guardrail.counting.text import CLAUDE_SAFETY_MARGIN

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "CLAUDE_SAFETY_MARGIN",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "TokenCounter",
    "clear_caches",
    "count_messages",
    "count_text",
    "counter_for",
    "field_of",
]
