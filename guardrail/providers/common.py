"""Helpers shared by the guarded SDK clients (:mod:`guardrail.providers.openai`,
:mod:`guardrail.providers.anthropic`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from guardrail.engine.adapter import ProviderAdapter
from guardrail.engine.drivers import AsyncDriver, SyncDriver
from guardrail.errors import InvalidRequestError, describe
from guardrail.tenancy import TenantBinding

if TYPE_CHECKING:
    from guardrail.guard import Guard


def given(value: Any) -> bool:
    """False for None and the SDK's NOT_GIVEN / omit sentinels."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


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
