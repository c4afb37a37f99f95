"""The prompt toolkit: fit prompts to token budgets, without the guarded client.

Owns: history trimming, text truncation, window allocation and prompt building, document
packing, conversation memory.
May import: counting, catalog, errors, _clock. Never engine, stores or providers.
"""
