"""The gateway's ASGI app (Starlette): routes, authentication, the admin API, health.

``create_app(config)`` builds it; ``guardrail serve`` runs it under uvicorn. The tenant of a
call comes from its key only (``Authorization: Bearer <key>`` or ``x-api-key: <key>``),
never from the request body, and the key is never forwarded: the upstream gets the
configured credential.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as Path
from starlette.types import ASGIApp, Receive, Scope, Send

from guardrail.catalog.models import list_models
from guardrail.errors import GuardrailError
from guardrail.guard import Guard
from guardrail.ledger.writer import LedgerSink
from guardrail.observe.config import alerts_from_config
from guardrail.observe.prometheus import PrometheusMetrics
from guardrail.observe.sinks import Sink
from guardrail.providers.anthropic.adapter import AnthropicAdapter
from guardrail.providers.openai.chat import OpenAIAdapter
from guardrail.providers.openai.client import COUNT_KEYS as RESPONSES_COUNT_KEYS
from guardrail.providers.openai.embeddings import EmbeddingsAdapter
from guardrail.providers.openai.responses import ResponsesAdapter
from guardrail.server.admin import admin_routes, dashboard_route
from guardrail.server.bodies import parse_object, presented_key, read_body, unsafe_path
from guardrail.server.calls import Calls, Route
from guardrail.server.config import GatewayConfig
from guardrail.server.shapes import Provider, error, refusal
from guardrail.server.tenants import Principal, Tenants
from guardrail.server.token_service import MAX_SERVICE_BYTES, SERVICES
from guardrail.server.upstream import Upstream, UpstreamUnreachable
from guardrail.stores.base import Store
from guardrail.stores.urls import open_store

__all__ = ["create_app", "store_for"]

ANTHROPIC_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def store_for(config: GatewayConfig) -> Store:
    """The store a config names: ``memory://``, or a Redis URL."""
    return open_store(config.store, prefix=config.prefix, timezone=config.timezone)


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
        key, provider = presented_key(request)
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
        request: Request, provider: Provider, limit: int = config.max_body_bytes
    ) -> tuple[dict[str, Any] | None, Response | None]:
        raw, too_big = await read_body(request, limit, provider)
        if too_big is not None:
            return None, too_big
        assert raw is not None
        return parse_object(raw, provider)

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
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        unsafe = unsafe_path(raw_path)
        if unsafe is not None:
            return error(provider, 400, f"{unsafe}: not forwarded", code="invalid_path")
        body, too_big = await read_body(request, config.max_body_bytes, provider)
        if too_big is not None:
            return too_big
        assert body is not None
        query = request.scope.get("query_string", b"").decode("latin-1")
        try:
            status, headers, payload = await upstream.forward(
                request.method, raw_path.decode("ascii"), query, body, request.headers
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
        function: Callable[[Mapping[str, Any]], dict[str, Any]], limit: int = MAX_SERVICE_BYTES
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            _, provider, refused = await authenticated(request)
            if refused is not None:
                return refused
            body, bad = await body_of(request, provider, min(config.max_body_bytes, limit))
            if bad is not None:
                return bad
            assert body is not None
            try:  # off the event loop: a long text takes tiktoken a while
                return JSONResponse(await run_in_threadpool(function, body))
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
        _, provider = presented_key(request)
        # Matched on the path as it is forwarded (forward refuses dot segments, encoded
        # slashes and backslashes, which could make it another path upstream).
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

    admin = admin_routes(config, guard, tenants)
    dashboard = dashboard_route(config, store)
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
