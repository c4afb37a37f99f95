"""The gateway: ``guardrail serve``, an OpenAI- and Anthropic-compatible proxy with per-tenant
keys, one more driver of the engine over the same stores (docs/gateway.md).

Owns: the config file (:mod:`.config`), keys and tenant policies (:mod:`.tenants`), the
upstream client (:mod:`.upstream`), guarded calls relayed to callers (:mod:`.calls`), the
provider-shaped answers (:mod:`.shapes`), the token service (:mod:`.token_service`), the
ASGI app and the admin API (:mod:`.app`), and running it (:mod:`.serve`).
May import: every layer below the CLI (guard, providers, engine, observe, stores, prompt,
counting, catalog). Needs the ``[server]`` extra (starlette, uvicorn, aiohttp).
"""
