"""Tenants and scopes: who a call is charged to.

A call is charged to its tenant, the tenant's parents (an organisation, a team, a
multi-agent run) and, when the guard has a global policy, the whole application. Ids are
validated so that no id can reach into another's store keys: 1 to 128 characters from
letters, digits and ``_ . @ + -``, starting with a letter or digit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from guardrail.errors import ConfigurationError, InvalidTenantError, describe

__all__ = [
    "DERIVED_PREFIX",
    "GLOBAL_SCOPE",
    "TenantBinding",
    "TenantFromRequest",
    "bound_tenant",
    "current_binding",
    "is_derived",
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


DERIVED_PREFIX = "_r-"
"""Tenants derived from a request field are ``_r-`` and 32 hex digits: an explicit id
cannot start with ``_``, so none can collide with a derived one."""
_DERIVED = re.compile(r"_r-[0-9a-f]{32}")


def is_derived(scope: str) -> bool:
    return bool(_DERIVED.fullmatch(scope))


@dataclass(frozen=True)
class TenantFromRequest:
    """Charge a call with no tenant bound to one derived from the request's own field
    (OpenAI ``safety_identifier``, else ``user``; Anthropic ``metadata.user_id``):
    ``Guard(tenant_from_request=TenantFromRequest(key=...))``.

    **The trust it implies**: whoever writes the request chooses its tenant. A caller that
    sends a new value every call gets a new budget every call, so derive tenants only from
    values your own code sets (an authenticated user id), never from what an end user
    controls, and cap them all together with ``parents`` (``parents=("public",)`` with a
    ``tenant_policies["public"]`` cap bounds what every derived tenant spends in all).

    The derived id is ``_r-`` and 32 hex digits of HMAC-SHA256 keyed with ``key``: a
    value never reaches another tenant's budget (explicit ids cannot start with ``_``),
    and without the key nobody can pick a value that lands on a given derived id. Use the
    same key in every process that shares a store (at least 16 bytes; keep it secret).
    ``Guard.request_tenant(value)`` gives the id of a value, for reports.
    """

    key: bytes | str
    parents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        key = self.key.encode() if isinstance(self.key, str) else self.key
        if not isinstance(key, bytes) or len(key) < 16:
            raise ConfigurationError("TenantFromRequest needs a key of at least 16 bytes")
        object.__setattr__(self, "key", key)
        parents = (self.parents,) if isinstance(self.parents, str) else tuple(self.parents)
        for parent in parents:
            validate_scope_id(parent, what="parent scope id")
        object.__setattr__(self, "parents", parents)

    def tenant_for(self, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise InvalidTenantError(
                f"user / safety_identifier must be a non-empty str, got {describe(value)}"
            )
        assert isinstance(self.key, bytes)
        digest = hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return DERIVED_PREFIX + digest.hexdigest()[:32]

    def binding_for(self, value: object) -> TenantBinding:
        return TenantBinding(self.tenant_for(value), self.parents)


def tenant_from_hint(hint: object) -> str:
    """Deprecated (unkeyed, and a valid id is used as it is): see :class:`TenantFromRequest`.

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
