"""The gateway's admin API (keys, tenant policies, usage) and its dashboard route, both
behind the admin key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as Path

from guardrail.dashboard.app import CHALLENGE, DashboardSource, admin_key_matches
from guardrail.dashboard.app import HEADERS as PAGE_HEADERS
from guardrail.errors import ConfigurationError, GuardrailError, describe
from guardrail.guard import Guard
from guardrail.ledger.database import DatabaseError
from guardrail.server.bodies import parse_object, presented_key, read_body
from guardrail.server.config import GatewayConfig
from guardrail.server.shapes import error
from guardrail.server.tenants import Tenants, policy_from_json, policy_to_json
from guardrail.stores.base import Store
from guardrail.tenancy import validate_scope_id

__all__ = ["admin_routes", "dashboard_route"]


def dashboard_route(config: GatewayConfig, store: Store) -> Path:
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


def admin_routes(config: GatewayConfig, guard: Guard, tenants: Tenants) -> list[Path]:
    """The admin API: keys, tenant policies, usage. Needs the admin key (from the
    environment variable ``admin_key_env`` names); without one configured it is absent."""
    if config.admin_key_env is None:
        return []

    async def json_body(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw, too_big = await read_body(request, config.max_body_bytes, "openai")
        if too_big is not None:
            return None, too_big
        assert raw is not None
        return parse_object(raw, "openai")

    def admin(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            key, _ = presented_key(request)
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
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        assert body is not None
        if "tenant" not in body:
            raise ConfigurationError('give {"tenant": ..., "parents"?: [...], "models"?: [...]}')
        tenant = body["tenant"]
        if not isinstance(tenant, str) or not tenant:  # not str(...): null is no tenant "None"
            raise ConfigurationError(f"tenant: must be a non-empty string, got {describe(tenant)}")
        label = _or_empty_str(body.get("label"))
        if not isinstance(label, str):
            raise ConfigurationError(f"label: must be a string, got {describe(label)}")
        models = body.get("models")
        parents = _strings(_or_empty(body.get("parents")), "parents")
        policy = None
        if "policy" in body:
            policy = policy_from_json(body["policy"])
        key, key_id = await tenants.create_key(
            tenant, parents, None if models is None else _strings(models, "models"), label
        )
        if policy is not None:
            await tenants.set_policy(tenant, policy)
        return JSONResponse({"key": key, "id": key_id, "tenant": tenant}, status_code=201)

    async def keys(request: Request) -> Response:
        return JSONResponse({"data": await tenants.list_keys()})

    async def revoke(request: Request) -> Response:
        if await tenants.revoke(request.path_params["key_id"]):
            return Response(status_code=204)
        return error("openai", 404, "no stored key with that id", type="not_found")

    async def set_policy(request: Request) -> Response:
        tenant = validate_scope_id(request.path_params["tenant"])
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        policy = policy_from_json(body)
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


def _strings(value: Any, name: str) -> tuple[str, ...]:
    """A list of non-empty strings, as the config file's ``parents`` and ``models`` are (a
    bare string would otherwise become its letters)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(f"{name}: must be a list of strings, got {value!r}")
    return tuple(value)


def _or_empty(value: Any) -> Any:
    return [] if value is None else value


def _or_empty_str(value: Any) -> Any:
    return "" if value is None else value
