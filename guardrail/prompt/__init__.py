"""The prompt toolkit: fit prompts to token budgets, without the guarded client.

Owns: history trimming (:mod:`.trimming`), text truncation (:mod:`.truncation`), sharing a
window between prompt parts (:mod:`.allocation`) and building prompts that fit
(:mod:`.builder`), document packing (:mod:`.packing`), conversation memory
(:mod:`.conversation`).
May import: counting, catalog, errors, _clock. Never engine, stores or providers.
"""

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

__all__ = [
    "Allocation",
    "BudgetPart",
    "ConversationMemory",
    "Document",
    "PackResult",
    "PartAllocation",
    "PartReport",
    "Prompt",
    "PromptBuilder",
    "RedisConversationMemory",
    "TokenBudget",
    "TrimResult",
    "allocate",
    "fit_messages",
    "pack_documents",
    "trim_messages",
    "truncate_text",
]
