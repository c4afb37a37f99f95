"""Tenants and scopes: who a call is charged to.

A call is charged to its tenant, the tenant's parents (an organisation, a team, a
multi-agent run) and, when the guard has a global policy, the whole application. Ids are
validated so that no id can reach into another's store keys: 1 to 128 characters from
letters, digits and ``_ . @ + -``, starting with a letter or digit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from guardrail.errors import InvalidTenantError, describe

__all__ = [
    "GLOBAL_SCOPE",
    "TenantBinding",
    "bound_tenant",
    "current_binding",
    "tenant_from_hint",
    "validate_scope_id",
]

_SCOPE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,127}")
GLOBAL_SCOPE = "_global"
"""The application-wide scope; it starts with '_' so no tenant id can be it."""


def validate_scope_id(value: object, *, what: str = "tenant id") -> str:
    if not isinstance(value, str):
        raise InvalidTenantError(f"{what} must be a str, got {type(value).__name__}")
    if not _SCOPE_ID.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidTenantError(
            f"invalid {what} {describe(shown)}: use 1-128 characters from letters, digits and "
            "'_.@+-', starting with a letter or digit"
        )
    return value


def tenant_from_hint(hint: object) -> str:
    """The tenant of a request's ``user`` / ``safety_identifier``.

    The API accepts any string there (base64 ids, emails with spaces, 200 characters); an
    id we could not use as a key becomes ``h-`` and 32 hex digits of its SHA-256, stable
    across processes, so the call still works and still lands on one tenant.
    """
    if isinstance(hint, str) and _SCOPE_ID.fullmatch(hint):
        return hint
    if not isinstance(hint, str) or not hint:
        raise InvalidTenantError(
            f"user / safety_identifier must be a non-empty str, got {describe(hint)}"
        )
    return "h-" + hashlib.sha256(hint.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class TenantBinding:
    tenant: str
    parents: tuple[str, ...] = ()

    @classmethod
    def of(cls, tenant: str, parents: Iterable[str] = ()) -> TenantBinding:
        if isinstance(parents, str):
            parents = (parents,)
        checked = tuple(validate_scope_id(p, what="parent scope id") for p in parents)
        tenant = validate_scope_id(tenant)
        if tenant in checked or len(set(checked)) != len(checked):
            raise InvalidTenantError(f"scopes of {describe(tenant)} repeat an id: {checked}")
        return cls(tenant, checked)


_current: ContextVar[TenantBinding | None] = ContextVar("guardrail_tenant", default=None)


def current_binding() -> TenantBinding | None:
    return _current.get()


@contextmanager
def bound_tenant(tenant: str, parents: Iterable[str] = ()) -> Iterator[TenantBinding]:
    """Charge calls in this block (this thread or task only) to ``tenant``."""
    token = _current.set(TenantBinding.of(tenant, parents))
    try:
        yield _current.get()  # type: ignore[misc]
    finally:
        _current.reset(token)
