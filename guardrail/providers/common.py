"""Helpers shared by the guarded SDK clients (:mod:`guardrail.providers.openai`,
:mod:`guardrail.providers.anthropic`)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardrail.catalog.pricing import TokenUsage
from guardrail.engine.adapter import PartialUsage, ProviderAdapter
from guardrail.engine.drivers import AsyncDriver, SyncDriver
from guardrail.errors import InvalidRequestError, describe
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard


def given(value: Any) -> bool:
    """False for None and the SDK's NOT_GIVEN / omit sentinels."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def token_count(value: Any) -> int | None:
    """A token count from a provider's usage: a non-negative int as it is, a finite
    non-negative float truncated; None for anything else (missing, null, negative, a bool,
    a string, infinity), which is not a count and must never be read as 0."""
    if type(value) is int:  # what the SDKs give
        return value if value >= 0 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if value >= 0 else None


def usage_field(usage: Any, name: str) -> int | None:
    """:func:`token_count` of one field of a usage object (an SDK model, or a dict when it
    came as JSON); None when the usage or the field is missing."""
    if type(usage) is dict:
        return token_count(usage.get(name))
    value = getattr(usage, name, None)  # an SDK model: no ABC check on the hot path
    if value is None and isinstance(usage, Mapping):
        value = usage.get(name)
    return token_count(value)


def usage_of(input_tokens: int | None, output_tokens: int | None, **rest: Any) -> TokenUsage:
    """A :class:`TokenUsage` of the counts read (:func:`token_count`); a
    :class:`PartialUsage` flagging the side that was unreadable, for the engine to fill."""
    if input_tokens is not None and output_tokens is not None:
        return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens, **rest)
    return PartialUsage(
        input_tokens=input_tokens or 0,
        output_tokens=output_tokens or 0,
        input_unread=input_tokens is None,
        output_unread=output_tokens is None,
        **rest,
    )


_has_headers: dict[type, bool] = {}  # response class -> a raw response, with headers


def request_id_of(response: Any, header: str) -> str | None:
    """The provider's id of the request that ``response`` answers: a parsed SDK model's
    ``_request_id``, or a raw response's ``request_id`` or ``header``. A parsed model is
    asked nothing else: a missing attribute costs pydantic a raised AttributeError."""
    rid = getattr(response, "_request_id", None)
    if rid is None:
        kind = type(response)
        raw = _has_headers.get(kind)
        if raw is None:  # once per class
            raw = hasattr(kind, "headers")
            if len(_has_headers) < 256:  # the SDKs' response classes are few
                _has_headers[kind] = raw
        if raw:
            rid = getattr(response, "request_id", None) or response.headers.get(header)
    return str(rid) if rid else None


MAX_MODEL_NAME = 256
"""The longest model name a request may give: every provider's names are far shorter, and
an unbounded one would be held by the catalog's caches and printed in warnings."""


def model_and_messages(kwargs: Mapping[str, Any]) -> tuple[str, Sequence[Any]]:
    """A request's ``model`` and ``messages``, checked (else InvalidRequestError)."""
    model = kwargs.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model must be a non-empty str, got {describe(model)}")
    if len(model) > MAX_MODEL_NAME:
        raise InvalidRequestError(
            f"model is a name of {len(model)} characters ({describe(model, 40)}); model "
            f"names are at most {MAX_MODEL_NAME}"
        )
    messages = kwargs.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidRequestError(
            f"messages must be a list of message dicts, got {type(messages).__name__}"
        )
    return model, messages


@functools.cache
def parameters_of(method: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword parameters an SDK method takes (None when it takes ``**kwargs``, or its
    signature cannot be read)."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return frozenset(signature.parameters) - {"self"}


def lift_extra_body(kwargs: dict[str, Any], parameters: frozenset[str] | None) -> dict[str, Any]:
    """``kwargs`` with every ``extra_body`` key that is a parameter of the SDK method moved
    up to the parameters.

    The SDK merges ``extra_body`` into the JSON body last, so a key there wins over the
    parameter of the same name: ``extra_body={"max_tokens": 100_000}`` would send past the
    bound the guard set, ``extra_body={"messages": [...]}`` a prompt it never counted. Lifted,
    the request sent is the same, and the guard reads (and bounds) what is sent. Keys the
    method does not take stay in ``extra_body`` (an adapter reads the ones that matter)."""
    extra = kwargs.get("extra_body")
    if not isinstance(extra, Mapping) or not extra or parameters is None:
        return kwargs
    lifted = {k: v for k, v in extra.items() if k in parameters and k != "extra_body"}
    if not lifted:
        return kwargs
    rest = {k: v for k, v in extra.items() if k not in lifted}
    merged = {**kwargs, **lifted}
    if rest:
        merged["extra_body"] = rest
    else:
        merged.pop("extra_body")
    return merged


def public(name: str) -> None:
    """Private names are never forwarded: ``copy.copy`` and ``pickle`` look them up on a
    half-built object, and forwarding would recurse."""
    if name.startswith("_"):
        raise AttributeError(name)


def run_sync(
    guard: Guard,
    adapter: ProviderAdapter,
    binding: TenantBinding | None,
    kwargs: dict[str, Any],
    send: Callable[[dict[str, Any]], Any],
    count: Callable[[dict[str, Any]], int] | None = None,
) -> Any:
    """One guarded call: plan it, then drive the engine's flow with ``send``."""
    plan = guard.engine.prepare(adapter, kwargs, binding)
    driver = SyncDriver(guard.store, adapter, send, guard.sleep, count=count)
    return driver.run(guard.engine.flow(adapter, kwargs, plan), plan)


async def run_async(
    guard: Guard,
    adapter: ProviderAdapter,
    binding: TenantBinding | None,
    kwargs: dict[str, Any],
    send: Callable[[dict[str, Any]], Awaitable[Any]],
    count: Callable[[dict[str, Any]], Awaitable[int]] | None = None,
) -> Any:
    """:func:`run_sync` for the async clients."""
    plan = guard.engine.prepare(adapter, kwargs, binding)
    driver = AsyncDriver(guard.store, adapter, send, guard.async_sleep, count=count)
    return await driver.run(guard.engine.flow(adapter, kwargs, plan), plan)
