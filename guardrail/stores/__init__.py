"""Where budgets live: the Store protocol, MemoryStore, RedisStore, the settlement spool.

Owns: atomic reserve / settle / release over every limit of every scope, and usage
aggregates per scope, model and day.
May import: errors, _clock. Never engine, providers, prompt or catalog.
"""
