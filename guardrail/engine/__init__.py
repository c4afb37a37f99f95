"""The sans-I/O core of a guarded call: every decision, no I/O.

Owns: planning a call (tenant, policy, count, fit, reserved output, worst-case cost), its
flow (reserve -> send with retries -> settle, yielded as operations), the retry policy, the
loop detector, usage records, and the sync and async drivers that perform the operations.
May import: errors, policy, tenancy, _clock, catalog, counting, prompt (trimming), stores
(the Store protocol and its value types), observe. Never a provider SDK, never providers.
"""
