"""The gateway's guarded calls: one more driver of the engine.

A call is planned, reserved, sent and settled by the same engine and adapters as a call
through a wrapped SDK client (:func:`guardrail.providers.common.run_async`); what differs is
only the I/O: the upstream is reached with aiohttp (:mod:`.upstream`), replies are relayed as
the provider sent them, and streams are relayed event by event while the adapter tallies
them. A caller that goes away mid-stream closes the upstream connection, and the call is
settled from what was counted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from guardrail.engine.adapter import ProviderAdapter
from guardrail.engine.drivers import AsyncGuardedStream
from guardrail.errors import BudgetExceeded, GuardrailError
from guardrail.guard import Guard
from guardrail.providers.common import given, run_async
from guardrail.server.shapes import Provider, error, refusal, remaining_headers
from guardrail.server.tenants import Principal, Tenants
from guardrail.server.upstream import NotAStream, Upstream, UpstreamError, UpstreamUnreachable
from guardrail.stores.base import UsageSummary
from guardrail.tenancy import TenantBinding

__all__ = ["Calls", "Route"]

_RELAYED = ("x-request-id", "request-id", "openai-processing-ms", "anthropic-organization-id")


@dataclass(frozen=True)
class Route:
    """One guarded endpoint of the gateway."""

    provider: Provider
    path: str
    adapter: ProviderAdapter
    count_path: str | None = None
    """The provider's free counting endpoint, for adapters that ask for an exact count."""
    count_keys: tuple[str, ...] = ()


class Calls:
    def __init__(self, guard: Guard, tenants: Tenants, upstreams: Mapping[str, Upstream]) -> None:
        self.guard = guard
        self.tenants = tenants
        self.upstreams = upstreams
        # (computed at, day reset, {"day": ..., "month": ...}): the windows' next starts,
        # the same for every call until the day turns.
        self._resets: tuple[float, float, dict[str, float]] | None = None

    async def call(
        self,
        route: Route,
        principal: Principal,
        kwargs: dict[str, Any],
        incoming: Mapping[str, str],
    ) -> Response:
        provider = route.provider
        upstream = self.upstreams.get(provider)
        if upstream is None:
            return error(
                provider, 404, f"this gateway has no {provider} upstream", type="not_found"
            )
        model = kwargs.get("model")
        if isinstance(model, str) and not principal.may_use(model):
            message = f"this key may not use model {model!r}"
            return error(provider, 403, message, type="permission_error", code="model_not_allowed")
        try:
            binding = principal.binding
        except GuardrailError as exc:  # a key stored with scopes no call can bind
            message = f"this key cannot be used: {exc} (revoke it and make a new one)"
            return error(provider, 403, message, type="permission_error", code="invalid_key")
        try:
            await self.tenants.refresh((principal.tenant, *principal.parents))
        except Exception as exc:  # the store failed: whose policy applies is unknown
            return error(
                provider,
                503,
                f"the policy store is unavailable: {exc!r}",
                type="store_unavailable",
                code="store_unavailable",
                headers={"retry-after": "1"},
            )

        async def send(kw: dict[str, Any]) -> Any:
            return await upstream.post(route.path, kw, incoming)

        count: Callable[[dict[str, Any]], Awaitable[int]] | None = None
        if route.count_path is not None:
            count_path = route.count_path

            async def count(kw: dict[str, Any]) -> int:
                params = {k: kw[k] for k in route.count_keys if given(kw.get(k))}
                reply = await upstream.post(count_path, params, incoming)
                return int(reply.input_tokens)  # type: ignore[union-attr]

        try:
            result = await run_async(self.guard, route.adapter, binding, kwargs, send, count)
        except GuardrailError as exc:
            return refusal(provider, exc)
        except UpstreamError as exc:  # the provider's own answer, relayed as it came
            return Response(exc.body, status_code=exc.status_code, headers=exc.headers)
        except UpstreamUnreachable as exc:
            return error(provider, 502, str(exc), type="server_error", code="upstream_unreachable")
        except NotAStream as exc:  # settled from its usage by the flow; see Upstream.post
            return error(
                provider,
                502,
                str(exc),
                type="server_error",
                code="upstream_not_a_stream",
                headers=exc.headers,
            )
        headers = await self.remaining(binding)
        if isinstance(result, AsyncGuardedStream):
            relayed = {k: v for k, v in result.headers.items() if k.lower() in _RELAYED}
            return StreamingResponse(
                relay(result, provider),
                media_type="text/event-stream",
                headers={**relayed, **headers, "cache-control": "no-cache"},
            )
        relayed = {k: v for k, v in result.headers.items() if k in _RELAYED}
        return Response(
            result.raw,
            status_code=result.status,
            media_type="application/json",
            headers={**relayed, **headers},
        )

    async def remaining(self, binding: TenantBinding) -> dict[str, str]:
        """Headers saying what the call's scopes have left: every scope its reservation
        checks (the tenant, its parents, the global policy) that has a money cap (nothing
        when none has)."""
        engine = self.guard.engine
        scopes = engine.scopes_for(binding, engine.policy_for(binding.tenant))
        capped = [s for s in scopes if s.money_limited]
        if not capped:
            return {}
        store = self.guard.store
        found = await asyncio.gather(
            *(store.ausage(s.scope) for s in capped), return_exceptions=True
        )
        usages = [u for u in found if isinstance(u, UsageSummary)]
        if len(usages) != len(capped):  # the call went through: a missing header must not fail it
            return {}
        return remaining_headers(list(zip(capped, usages, strict=True)), self._resets_at(store))

    def _resets_at(self, store: Any) -> dict[str, float]:
        """When the store's day and month next begin (POSIX seconds). Cached: within one
        local day both are the same for every ``now``, so the cache holds from the moment
        it was computed until the day turns (a clock that goes back recomputes)."""
        now = store.now()
        cached = self._resets
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        day = store.windows.next_day(now).timestamp()
        resets = {"day": day, "month": store.windows.next_month(now).timestamp()}
        self._resets = (now, day, resets)
        return resets


async def relay(stream: AsyncGuardedStream, provider: Provider) -> AsyncIterator[bytes]:
    """The guarded stream's events, as the provider sent them (a chunk the caller did not
    ask for, such as the usage-only one guardrail added, is not relayed). However it ends
    (exhausted, the caller gone, the upstream broken, an overrun) the stream is closed and
    the call settled. The last event is held back until the call is settled, so a caller
    that has read the whole stream finds it in the usage (read-your-writes)."""
    held: bytes | None = None
    try:
        async for event in stream:
            if held is not None:
                yield held
            held = event.raw
        await stream.close()  # exhausted: settled before the caller sees the end
    except BudgetExceeded as exc:  # an overrun: the stream was cut and settled
        if held is not None:
            yield held
            held = None
        yield _error_event(provider, "budget_exceeded", str(exc))
    except (UpstreamUnreachable, GuardrailError) as exc:  # broken, or no event to read
        if held is not None:
            yield held
            held = None
        yield _error_event(provider, "server_error", str(exc))
    finally:
        await stream.close()
    if held is not None:
        yield held


def _error_event(provider: Provider, kind: str, message: str) -> bytes:
    if provider == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
    return b"data: " + json.dumps({"error": {"message": message, "type": kind}}).encode() + b"\n\n"
