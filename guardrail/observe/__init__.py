"""What guardrail tells the outside world: usage records and their sinks.

Owns: :class:`UsageRecord` and where records go (the ``guardrail.usage`` JSON-lines
logger, callables).
May import: errors, stores (the Store protocol). Never engine or providers.
"""
