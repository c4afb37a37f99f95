"""Who is calling, and under which policy: the gateway's keys and tenant policies.

Keys come from the config file (only their SHA-256 is kept) and from the admin API, which
stores them hashed in the store (``records`` of kind ``keys``), so every replica sees a new
or revoked key. Policies come from the config (``[policy]``, ``[tenants.X]``,
``[keys.policy]``) and from the admin API (records of kind ``policies``), which win.

A presented key is looked up by its digest; store lookups are cached for
:data:`CACHE_SECONDS` per process, so a key revoked on one replica stops working on the
others within that time (at once on the replica that revoked it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from guardrail.errors import ConfigurationError, InvalidTenantError
from guardrail.policy import Policy
from guardrail.server.config import POLICY_FIELDS, GatewayConfig
from guardrail.stores.base import Store
from guardrail.tenancy import TenantBinding, validate_scope_id

__all__ = ["CACHE_SECONDS", "Principal", "Tenants", "digest", "new_key", "policy_to_json"]

CACHE_SECONDS = 1.0
KEYS, POLICIES = "keys", "policies"

_log = logging.getLogger("guardrail")


@dataclass(frozen=True)
class Principal:
    """The tenant a key charges, and what it may do."""

    tenant: str
    parents: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    key_id: str = ""
    """The first 12 hex digits of the key's SHA-256 (how the admin API names a key)."""

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    @functools.cached_property
    def binding(self) -> TenantBinding:
        """The engine's binding of this principal's scopes (validated once per principal)."""
        return TenantBinding.of(self.tenant, self.parents)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh tenant key: 32 bytes from the OS's CSPRNG."""
    return "sk-gr-" + secrets.token_urlsafe(32)


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """A policy as JSON (only the fields that differ from the defaults)."""
    default = Policy()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Policy):
        value = getattr(policy, f.name)
        if value != getattr(default, f.name):
            out[f.name] = (
                str(value)
                if f.name.endswith("_usd")
                else (list(value) if isinstance(value, tuple) else value)
            )
    return out


def policy_from_json(data: Any, where: str = "policy") -> Policy:
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{where}: must be an object of Policy fields")
    for key in data:
        if key not in POLICY_FIELDS:
            raise ConfigurationError(f"{where}.{key}: unknown Policy field")
    try:
        return Policy(**data)
    except (ConfigurationError, TypeError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


class Tenants:
    """Keys and policies, from the config and the store, cached briefly."""

    def __init__(
        self, config: GatewayConfig, store: Store, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        # One Principal per file key, built once (and so its binding validated once).
        self._file_keys = {
            k.sha256: Principal(k.tenant, k.parents, k.models, k.sha256[:12]) for k in config.keys
        }
        self._file_policies: dict[str, Policy] = dict(config.tenants)
        for key in config.keys:
            if key.policy is not None:
                self._file_policies[key.tenant] = key.policy
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._policies: dict[str, tuple[float, Policy | None]] = {}

    # -- keys

    async def principal(self, presented: str) -> Principal | None:
        """The tenant of a presented key, or None (unknown or revoked)."""
        key_hash = digest(presented)
        found = self._file_keys.get(key_hash)
        if found is not None:
            return found
        now = self._clock()
        cached = self._keys.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self.store.aget_record(KEYS, key_hash)
        principal = _principal(record, key_hash)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[key_hash] = (now + CACHE_SECONDS, principal)
        return principal

    async def create_key(
        self,
        tenant: str,
        parents: tuple[str, ...] = (),
        models: tuple[str, ...] | None = None,
        label: str = "",
    ) -> tuple[str, str]:
        """A new key for ``tenant``: (the key, shown once; its id). Its scopes are checked
        as every call with it will bind them (:meth:`TenantBinding.of`)."""
        validate_scope_id(tenant)
        try:
            TenantBinding.of(tenant, parents)
        except InvalidTenantError as exc:
            raise InvalidTenantError(f"parents: {exc}") from None
        key = new_key()
        key_hash = digest(key)
        record = {
            "tenant": tenant,
            "parents": list(parents),
            "models": None if models is None else list(models),
            "label": label,
            "created": time.time(),
        }
        await self.store.aput_record(KEYS, key_hash, json.dumps(record))
        self._keys.pop(key_hash, None)
        return key, key_hash[:12]

    async def list_keys(self) -> list[dict[str, Any]]:
        stored = await self.store.alist_records(KEYS)
        out = [
            {"id": h[:12], "source": "store", **json.loads(v)} for h, v in sorted(stored.items())
        ]
        out += [
            {
                "id": k.sha256[:12],
                "source": "config",
                "tenant": k.tenant,
                "parents": list(k.parents),
                "label": k.label,
            }
            for k in self.config.keys
        ]
        return out

    async def revoke(self, key_id: str) -> bool:
        """Delete the stored key whose id (digest prefix) is ``key_id``."""
        if len(key_id) < 12 or any(c not in "0123456789abcdef" for c in key_id):
            return False
        stored = await self.store.alist_records(KEYS)
        hits = [h for h in stored if h.startswith(key_id)]
        if len(hits) != 1:
            return False
        self._keys.pop(hits[0], None)
        return await self.store.adelete_record(KEYS, hits[0])

    def is_admin(self, presented: str | None) -> bool:
        admin = self.config.admin_key
        return bool(admin and presented and hmac.compare_digest(presented.encode(), admin.encode()))

    # -- policies

    async def refresh(self, scopes: tuple[str, ...]) -> None:
        """Load the stored policies of ``scopes`` into the cache (before a call, so that the
        engine's policy lookups, which are synchronous, never wait on the store)."""
        now = self._clock()
        for scope in scopes:
            cached = self._policies.get(scope)
            if cached is not None and cached[0] > now:
                continue
            try:
                record = await self.store.aget_record(POLICIES, scope)
            except Exception as exc:
                if cached is None:  # an admin's policy may be tighter than the file's
                    raise
                # The policy known a moment ago, rather than refusing everybody on a blip.
                _log.warning("guardrail: cannot refresh the policy of %s (%r)", scope, exc)
                continue
            policy = None if record is None else policy_from_json(json.loads(record))
            self._policies[scope] = (now + CACHE_SECONDS, policy)

    def policy_for(self, scope: str) -> Policy | None:
        """The policy of ``scope``: the admin API's, else the config's, else None (the
        default policy for a tenant; no limits for a parent)."""
        cached = self._policies.get(scope)
        if cached is not None and cached[1] is not None:
            return cached[1]
        return self._file_policies.get(scope)

    async def set_policy(self, scope: str, policy: Policy) -> None:
        validate_scope_id(scope)
        await self.store.aput_record(POLICIES, scope, json.dumps(policy_to_json(policy)))
        self._policies[scope] = (self._clock() + CACHE_SECONDS, policy)

    async def stored_policy(self, scope: str) -> Policy | None:
        record = await self.store.aget_record(POLICIES, scope)
        return None if record is None else policy_from_json(json.loads(record))


def _principal(record: str | None, key_hash: str) -> Principal | None:
    if record is None:
        return None
    data = json.loads(record)
    models = data.get("models")
    return Principal(
        data["tenant"],
        tuple(data.get("parents") or ()),
        None if models is None else tuple(models),
        key_hash[:12],
    )
