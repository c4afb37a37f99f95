"""The gateway's ASGI app (Starlette): routes, authentication, the admin API, health.

``create_app(config)`` builds it; ``guardrail serve`` runs it under uvicorn. The tenant of a
call comes from its key only (``Authorization: Bearer <key>`` or ``x-api-key: <key>``),
never from the request body, and the key is never forwarded: the upstream gets the
configured credential.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import date
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as Path
from starlette.types import ASGIApp, Receive, Scope, Send

from guardrail.catalog.models import list_models
from guardrail.dashboard.app import CHALLENGE, DashboardSource, admin_key_matches
from guardrail.dashboard.app import HEADERS as PAGE_HEADERS
from guardrail.errors import ConfigurationError, GuardrailError
from guardrail.guard import Guard
from guardrail.ledger.database import DatabaseError
from guardrail.ledger.writer import LedgerSink
from guardrail.observe.config import alerts_from_config
from guardrail.observe.prometheus import PrometheusMetrics
from guardrail.observe.sinks import Sink
from guardrail.providers.anthropic.adapter import AnthropicAdapter
from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.providers.openai.client import COUNT_KEYS as RESPONSES_COUNT_KEYS
from guardrail.providers.openai.embeddings import EmbeddingsAdapter
from guardrail.providers.openai.responses import ResponsesAdapter
from guardrail.server.calls import Calls, Route
from guardrail.server.config import GatewayConfig
from guardrail.server.shapes import Provider, error, refusal
from guardrail.server.tenants import Principal, Tenants, policy_from_json, policy_to_json
from guardrail.server.token_service import SERVICES
from guardrail.server.upstream import Upstream, UpstreamUnreachable
from guardrail.stores.base import Store
from guardrail.stores.urls import open_store
from guardrail.tenancy import validate_scope_id

__all__ = ["create_app", "store_for"]

ANTHROPIC_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def store_for(config: GatewayConfig) -> Store:
    """The store a config names: ``memory://``, or a Redis URL."""
    return open_store(config.store, prefix=config.prefix, timezone=config.timezone)


def _presented_key(request: Request) -> tuple[str | None, Provider]:
    """The key a caller presented, and the provider shape its SDK expects (the Anthropic
    SDK sends ``x-api-key``, the OpenAI SDK a bearer token)."""
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key, "anthropic"
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None, "openai"
    return None, "openai"


def create_app(
    config: GatewayConfig, *, store: Store | None = None, sinks: Iterable[Sink] = ()
) -> Starlette:
    """The gateway for ``config`` (``store`` overrides the config's, for tests; ``sinks``
    receive every call's UsageRecord)."""
    store = store if store is not None else store_for(config)
    tenants = Tenants(config, store)
    metrics = PrometheusMetrics() if config.metrics else None
    ledger = _ledger_sink(config)
    if ledger is not None:
        sinks = [*sinks, ledger]
    alerts = (
        alerts_from_config(config.alerts, also=[ledger.alert] if ledger else [])
        if config.alerts is not None
        else None
    )
    guard = Guard(
        config.policy,
        store=store,
        tenant_policies=tenants.policy_for,
        global_policy=config.global_policy,
        default_tenant=None,  # the tenant comes from the key, never from the request
        on_store_error=config.on_store_error,
        unmetered=config.unmetered,
        sinks=sinks,
        telemetry=metrics.telemetry() if metrics is not None else False,
        alerts=alerts,
    )
    upstreams: dict[str, Upstream] = {}
    calls = Calls(guard, tenants, upstreams)
    anthropic = config.upstreams.get("anthropic")
    routes = {
        "/v1/chat/completions": Route("openai", "/v1/chat/completions", OpenAIAdapter()),
        "/v1/responses": Route(
            "openai",
            "/v1/responses",
            ResponsesAdapter(),
            "/v1/responses/input_tokens",
            RESPONSES_COUNT_KEYS,
        ),
        "/v1/embeddings": Route("openai", "/v1/embeddings", EmbeddingsAdapter()),
        "/v1/messages": Route(
            "anthropic",
            "/v1/messages",
            AnthropicAdapter(exact_count=anthropic.exact_count if anthropic else False),
            "/v1/messages/count_tokens",
            ANTHROPIC_COUNT_KEYS,
        ),
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sessions = []
        for name, spec in config.upstreams.items():
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300)
            )
            sessions.append(session)
            upstreams[name] = Upstream(spec, session)
        try:
            yield
        finally:
            for session in sessions:
                await session.close()
            if alerts is not None:  # deliver what is queued before the process ends
                alerts.close()
            if ledger is not None:  # then write what the calls and the alerts left
                await run_in_threadpool(ledger.close)
            close = getattr(store, "aclose", None)
            if close is not None:
                await close()

    async def authenticated(request: Request) -> tuple[Principal | None, Provider, Response | None]:
        key, provider = _presented_key(request)
        if key is None:
            return (
                None,
                provider,
                error(
                    provider,
                    401,
                    "no API key: send Authorization: Bearer <key>",
                    type="invalid_api_key",
                    code="invalid_api_key",
                ),
            )
        try:
            principal = await tenants.principal(key)
        except Exception as exc:  # the store failed: nobody can be recognised
            return (
                None,
                provider,
                error(
                    provider,
                    503,
                    f"the key store is unavailable: {exc!r}",
                    type="store_unavailable",
                    code="store_unavailable",
                    headers={"retry-after": "1"},
                ),
            )
        if principal is None:
            return (
                None,
                provider,
                error(
                    provider,
                    401,
                    "unknown or revoked API key",
                    type="invalid_api_key",
                    code="invalid_api_key",
                ),
            )
        return principal, provider, None

    async def body_of(
        request: Request, provider: Provider
    ) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            return None, error(provider, 413, f"request body over {config.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            return None, error(provider, 400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return None, error(provider, 400, "the request body must be a JSON object")
        return body, None

    def guarded(route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            principal, _, refused = await authenticated(request)
            if refused is not None:
                return refused
            assert principal is not None
            body, bad = await body_of(request, route.provider)
            if bad is not None:
                return bad
            assert body is not None
            return await calls.call(route, principal, body, request.headers)

        return endpoint

    async def count_tokens(request: Request) -> Response:  # Anthropic's, free: forwarded
        return await forward(request, "anthropic")

    async def forward(request: Request, provider: Provider) -> Response:
        _, _, refused = await authenticated(request)
        if refused is not None:
            return refused
        upstream = upstreams.get(provider)
        if upstream is None:
            return error(
                provider, 404, f"this gateway has no {provider} upstream", type="not_found"
            )
        body = await request.body()
        try:
            status, headers, payload = await upstream.forward(
                request.method, request.url.path, request.url.query, body, request.headers
            )
        except UpstreamUnreachable as exc:
            return error(provider, 502, str(exc), type="server_error", code="upstream_unreachable")
        return Response(payload, status_code=status, headers=headers)

    async def models(request: Request) -> Response:
        principal, provider, refused = await authenticated(request)
        if refused is not None:
            return refused
        assert principal is not None
        names = [m.name for m in list_models() if principal.may_use(m.name)]
        if provider == "anthropic":
            data = [
                {"id": n, "type": "model", "display_name": n, "created_at": "2024-01-01T00:00:00Z"}
                for n in names
                if n.startswith("claude")
            ]
            return JSONResponse(
                {"data": data, "has_more": False, "first_id": None, "last_id": None}
            )
        listed: list[dict[str, Any]] = [
            {"id": n, "object": "model", "created": 0, "owned_by": "guardrail"} for n in names
        ]
        return JSONResponse({"object": "list", "data": listed})

    def service(
        function: Callable[[Mapping[str, Any]], dict[str, Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            _, provider, refused = await authenticated(request)
            if refused is not None:
                return refused
            body, bad = await body_of(request, provider)
            if bad is not None:
                return bad
            assert body is not None
            try:
                return JSONResponse(function(body))
            except GuardrailError as exc:
                return refusal(provider, exc)

        return endpoint

    async def health(request: Request) -> Response:
        try:
            await store.ausage("_health")
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "store": repr(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        if metrics is None:
            return error("openai", 404, "metrics are off (metrics = false)", type="not_found")
        return Response(metrics.render(), media_type=metrics.content_type)

    async def fallback(request: Request) -> Response:
        _, provider = _presented_key(request)
        path = request.url.path.rstrip("/")
        if any(path == p or path.startswith(p + "/") for p in config.passthrough):
            target: Provider = provider if provider in upstreams else "openai"
            return await forward(request, target)
        return error(
            provider,
            404,
            f"{request.method} {request.url.path} is not served by this gateway",
            type="not_found",
            code="unknown_url",
        )

    admin = _admin_routes(config, guard, tenants)
    dashboard = _dashboard_route(config, store)
    endpoints = {p: guarded(r) for p, r in routes.items()}
    paths = [
        *(Path(p, e, methods=["POST"]) for p, e in endpoints.items()),
        Path("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Path("/v1/models", models, methods=["GET"]),
        *(Path(p, service(f), methods=["POST"]) for p, f in SERVICES.items()),
        Path("/health", health, methods=["GET"]),
        Path("/metrics", prometheus, methods=["GET"]),
        *admin,
        dashboard,
        Path("/{path:path}", fallback, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    fast = Middleware(GuardedFastPath, endpoints=endpoints)
    app = Starlette(routes=paths, lifespan=lifespan, middleware=[fast])
    app.state.guard, app.state.tenants, app.state.store = guard, tenants, store
    app.state.ledger = ledger
    return app


class GuardedFastPath:
    """The guarded routes (``POST`` to exactly one of their paths), straight to their
    endpoint: the same endpoint the router would call, the same ``Request`` and
    ``Response``, without the router's match over every route and the exception
    middleware's layers (~20 µs a call; the guarded endpoints raise nothing those layers
    handle: an unexpected error still reaches Starlette's server-error middleware, outside
    this one, and is a 500). Anything else, or a scope with a ``root_path``, goes on to the
    router unchanged."""

    def __init__(
        self, app: ASGIApp, endpoints: Mapping[str, Callable[[Request], Awaitable[Response]]]
    ) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _ledger_sink(config: GatewayConfig) -> LedgerSink | None:
    if config.ledger is None:
        return None
    return LedgerSink(
        config.ledger.url,
        timezone=config.timezone,
        retention_days=config.ledger.retention_days,
        spool_path=config.ledger.spool,
    )


def _dashboard_route(config: GatewayConfig, store: Store) -> Path:
    """``GET /dashboard``: the page over the ledger and the live store, for the admin key
    (a bearer token, or HTTP Basic from a browser)."""
    source = (
        None
        if config.ledger is None
        else DashboardSource(
            config.ledger.url,
            store,
            timezone=config.timezone,
            title=config.ledger.dashboard_title,
        )
    )

    async def dashboard(request: Request) -> Response:
        if source is None or config.admin_key_env is None:
            return PlainTextResponse(
                "the dashboard needs [ledger] and admin_key_env in the config", 404
            )
        if not admin_key_matches(request.headers, config.admin_key):
            return PlainTextResponse("this needs the admin key", 401, headers=CHALLENGE)
        try:
            html = await run_in_threadpool(source.page)
        except DatabaseError as exc:
            return PlainTextResponse(f"the ledger is not answering: {exc}", 503)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    return Path("/dashboard", dashboard, methods=["GET"])


def _admin_routes(config: GatewayConfig, guard: Guard, tenants: Tenants) -> list[Path]:
    """The admin API: keys, tenant policies, usage. Needs the admin key (from the
    environment variable ``admin_key_env`` names); without one configured it is absent."""
    if config.admin_key_env is None:
        return []

    def admin(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            key, _ = _presented_key(request)
            if not tenants.is_admin(key):
                return error(
                    "openai",
                    401,
                    "this needs the admin key",
                    type="invalid_api_key",
                    code="invalid_api_key",
                )
            try:
                return await handler(request)
            except (ConfigurationError, GuardrailError, ValueError, KeyError) as exc:
                return error("openai", 400, str(exc))

        return endpoint

    async def create_key(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict) or "tenant" not in body:
            raise ConfigurationError('give {"tenant": ..., "parents"?: [...], "models"?: [...]}')
        models = body.get("models")
        key, key_id = await tenants.create_key(
            str(body["tenant"]),
            tuple(body.get("parents") or ()),
            None if models is None else tuple(models),
            str(body.get("label", "")),
        )
        if "policy" in body:
            await tenants.set_policy(str(body["tenant"]), policy_from_json(body["policy"]))
        return JSONResponse({"key": key, "id": key_id, "tenant": body["tenant"]}, status_code=201)

    async def keys(request: Request) -> Response:
        return JSONResponse({"data": await tenants.list_keys()})

    async def revoke(request: Request) -> Response:
        if await tenants.revoke(request.path_params["key_id"]):
            return Response(status_code=204)
        return error("openai", 404, "no stored key with that id", type="not_found")

    async def set_policy(request: Request) -> Response:
        tenant = validate_scope_id(request.path_params["tenant"])
        policy = policy_from_json(await request.json())
        await tenants.set_policy(tenant, policy)
        return JSONResponse({"tenant": tenant, "policy": policy_to_json(policy)})

    async def get_policy(request: Request) -> Response:
        tenant = validate_scope_id(request.path_params["tenant"])
        stored = await tenants.stored_policy(tenant)
        await tenants.refresh((tenant,))
        effective = guard.engine.policy_for(tenant)
        source = (
            "admin"
            if stored is not None
            else ("config" if tenants.policy_for(tenant) else "default")
        )
        return JSONResponse(
            {"tenant": tenant, "policy": policy_to_json(effective), "source": source}
        )

    async def usage(request: Request) -> Response:
        query = request.query_params
        scopes = [validate_scope_id(query["tenant"])] if "tenant" in query else None
        since = date.fromisoformat(query["since"]) if "since" in query else None
        until = date.fromisoformat(query["until"]) if "until" in query else None
        rows = await guard.ausage_report(scopes, since, until)
        data = [
            {
                "tenant": r.scope,
                "day": r.day.isoformat(),
                "model": r.model,
                "cost_usd": str(r.cost_usd),
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "requests": r.requests,
            }
            for r in rows
        ]
        return JSONResponse({"data": data})

    return [
        Path("/admin/keys", admin(create_key), methods=["POST"]),
        Path("/admin/keys", admin(keys), methods=["GET"]),
        Path("/admin/keys/{key_id}", admin(revoke), methods=["DELETE"]),
        Path("/admin/tenants/{tenant}/policy", admin(set_policy), methods=["PUT"]),
        Path("/admin/tenants/{tenant}/policy", admin(get_policy), methods=["GET"]),
        Path("/admin/usage", admin(usage), methods=["GET"]),
    ]
