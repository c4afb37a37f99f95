"""The gateway's configuration: a TOML file, checked before anything starts.

An error names the key and the problem (``keys[1].tenant: required``), raised as a
:class:`~guardrail.ConfigurationError`; ``guardrail serve`` prints it and exits.
See docs/gateway.md for every key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from guardrail.errors import ConfigurationError, InvalidTenantError
from guardrail.policy import Policy
from guardrail.tenancy import TenantBinding, validate_scope_id

__all__ = [
    "GatewayConfig",
    "KeyConfig",
    "LedgerConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]

POLICY_FIELDS = frozenset(f.name for f in dataclasses.fields(Policy))
_TOP = frozenset(
    {
        "store",
        "prefix",
        "on_store_error",
        "unmetered",
        "admin_key_env",
        "passthrough",
        "upstream",
        "policy",
        "global_policy",
        "tenants",
        "keys",
        "max_body_bytes",
        "metrics",
        "alerts",
        "ledger",
        "timezone",
    }
)
_LEDGER = frozenset({"url", "retention_days", "spool", "dashboard_title"})
_UPSTREAM = frozenset({"base_url", "api_key_env", "timeout_seconds", "exact_count"})
_KEY = frozenset({"key", "key_sha256", "tenant", "parents", "models", "policy", "label"})
DEFAULT_UPSTREAMS = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY"),
}


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    base_url: str
    api_key_env: str
    timeout_seconds: float = 600.0
    exact_count: bool = True
    """Anthropic only: ask ``messages.count_tokens`` for each new prompt."""

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


@dataclass(frozen=True)
class KeyConfig:
    """A tenant key from the file: only its SHA-256 is kept."""

    sha256: str
    tenant: str
    parents: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    policy: Policy | None = None
    label: str = ""


@dataclass(frozen=True)
class LedgerConfig:
    """``[ledger]``: every call's record written to a database, and the dashboard."""

    url: str
    retention_days: int | None = None
    spool: str | None = None
    dashboard_title: str = "guardrail"


@dataclass(frozen=True)
class GatewayConfig:
    store: str = "memory://"
    prefix: str = "guardrail"
    timezone: str = "UTC"
    """The store's time zone (when its days and months begin), which the ledger and the
    dashboard use too."""
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    unmetered: Literal["refuse", "allow"] = "refuse"
    admin_key_env: str | None = None
    passthrough: tuple[str, ...] = ()
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    global_policy: Policy | None = None
    tenants: Mapping[str, Policy] = field(default_factory=dict)
    keys: tuple[KeyConfig, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    metrics: bool = True
    """Serve the guard's metrics in the Prometheus text format at ``GET /metrics``."""
    alerts: Mapping[str, Any] | None = None
    """The ``[alerts]`` table, for :func:`guardrail.observe.alerts_from_config`."""
    ledger: LedgerConfig | None = None
    """``[ledger]``: where every call's record is written, and what ``/dashboard`` shows."""

    @property
    def admin_key(self) -> str | None:
        return os.environ.get(self.admin_key_env) or None if self.admin_key_env else None


def _fail(where: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {problem}")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"must be a table, got {type(value).__name__}")
    return value


def _unknown(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise _fail(f"{where}.{key}" if where else key, "unknown key")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"must be a non-empty string, got {value!r}")
    return value


def _policy(value: Any, where: str) -> Policy:
    table = _table(value, where)
    _unknown(table, POLICY_FIELDS, where)
    try:
        return Policy(**table)
    except (ConfigurationError, TypeError) as exc:
        raise _fail(where, str(exc)) from None


def _scope(value: Any, where: str) -> str:
    try:
        return validate_scope_id(_str(value, where), what=where)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise _fail(where, str(exc)) from None


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str):  # shown as it is, in the admin API and the dashboard
        raise _fail(where, f"must be a string, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, "must be a list of strings")
    return tuple(value)


def _upstreams(value: Any) -> dict[str, UpstreamConfig]:
    table = _table(value, "upstream")
    found = {}
    for name, raw in table.items():
        where = f"upstream.{name}"
        if name not in DEFAULT_UPSTREAMS:
            raise _fail(where, f"unknown upstream (expected one of {sorted(DEFAULT_UPSTREAMS)})")
        spec = _table(raw, where)
        _unknown(spec, _UPSTREAM, where)
        default_url, default_env = DEFAULT_UPSTREAMS[name]
        timeout = spec.get("timeout_seconds", 600.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise _fail(f"{where}.timeout_seconds", "must be a positive number")
        exact = spec.get("exact_count", True)
        if not isinstance(exact, bool):
            raise _fail(f"{where}.exact_count", "must be true or false")
        url = _str(spec.get("base_url", default_url), f"{where}.base_url")
        if not url.startswith(("http://", "https://")):
            raise _fail(f"{where}.base_url", f"must be an http(s) URL, got {url!r}")
        found[name] = UpstreamConfig(
            name=name,
            base_url=url.rstrip("/"),
            api_key_env=_str(spec.get("api_key_env", default_env), f"{where}.api_key_env"),
            timeout_seconds=float(timeout),
            exact_count=exact,
        )
    return found


def _key(value: Any, index: int) -> KeyConfig:
    where = f"keys[{index}]"
    spec = _table(value, where)
    _unknown(spec, _KEY, where)
    if ("key" in spec) == ("key_sha256" in spec):
        raise _fail(where, "give exactly one of key or key_sha256")
    if "key" in spec:
        digest = hashlib.sha256(_str(spec["key"], f"{where}.key").encode()).hexdigest()
    else:
        digest = _str(spec["key_sha256"], f"{where}.key_sha256").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _fail(f"{where}.key_sha256", "must be 64 hex digits")
    if "tenant" not in spec:
        raise _fail(f"{where}.tenant", "required")
    tenant = _scope(spec["tenant"], f"{where}.tenant")
    parents = tuple(
        _scope(p, f"{where}.parents") for p in _strings(spec.get("parents", []), f"{where}.parents")
    )
    try:  # the binding every call with the key makes: checked now, not on each call
        TenantBinding.of(tenant, parents)
    except InvalidTenantError as exc:
        raise _fail(f"{where}.parents", str(exc)) from None
    return KeyConfig(
        sha256=digest,
        tenant=tenant,
        parents=parents,
        models=_strings(spec["models"], f"{where}.models") if "models" in spec else None,
        policy=_policy(spec["policy"], f"{where}.policy") if "policy" in spec else None,
        label=_label(spec.get("label", ""), f"{where}.label"),
    )


def parse_config(data: Mapping[str, Any]) -> GatewayConfig:
    """A checked :class:`GatewayConfig` from parsed TOML."""
    _unknown(data, _TOP, "")
    store = _str(data.get("store", "memory://"), "store")
    if not store.startswith(("memory://", "redis://", "rediss://", "unix://")):
        raise _fail("store", f"must be memory:// or a redis:// URL, got {store!r}")
    mode = data.get("on_store_error", "fail_closed")
    if mode not in ("fail_closed", "fail_open"):
        raise _fail("on_store_error", "must be 'fail_closed' or 'fail_open'")
    unmetered = data.get("unmetered", "refuse")
    if unmetered not in ("refuse", "allow"):
        raise _fail("unmetered", "must be 'refuse' or 'allow'")
    upstreams = _upstreams(data.get("upstream", {}))
    if not upstreams:
        raise _fail("upstream", "configure at least one of [upstream.openai], [upstream.anthropic]")
    keys = tuple(_key(k, i) for i, k in enumerate(_list(data.get("keys", []), "keys")))
    digests = [k.sha256 for k in keys]
    if len(set(digests)) != len(digests):
        raise _fail("keys", "the same key is configured twice")
    tenants = {
        _scope(name, f"tenants.{name}"): _policy(spec, f"tenants.{name}")
        for name, spec in _table(data.get("tenants", {}), "tenants").items()
    }
    policy = _policy(data.get("policy", {}), "policy")
    limit = data.get("max_body_bytes", 32 * 1024 * 1024)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1024:
        raise _fail("max_body_bytes", "must be an integer of at least 1024")
    metrics = data.get("metrics", True)
    if not isinstance(metrics, bool):
        raise _fail("metrics", "must be true or false")
    alerts = None
    if "alerts" in data:
        from guardrail.observe.config import alerts_from_config

        alerts = _table(data["alerts"], "alerts")
        try:
            alerts_from_config(alerts).close()  # checked now; built again when serving
        except ConfigurationError as exc:
            raise _fail("alerts", str(exc)) from None
    timezone = _str(data.get("timezone", "UTC"), "timezone")
    try:
        ZoneInfo(timezone)
    except (KeyError, ValueError):
        raise _fail("timezone", f"unknown time zone {timezone!r}") from None
    return GatewayConfig(
        timezone=timezone,
        ledger=_ledger(data["ledger"]) if "ledger" in data else None,
        store=store,
        prefix=_str(data.get("prefix", "guardrail"), "prefix"),
        on_store_error=mode,
        unmetered=unmetered,
        admin_key_env=_str(data["admin_key_env"], "admin_key_env")
        if "admin_key_env" in data
        else None,
        passthrough=tuple(
            p.rstrip("/") for p in _strings(data.get("passthrough", []), "passthrough")
        ),
        upstreams=upstreams,
        policy=policy,
        global_policy=_policy(data["global_policy"], "global_policy")
        if "global_policy" in data
        else None,
        tenants=tenants,
        keys=keys,
        max_body_bytes=limit,
        metrics=metrics,
        alerts=alerts,
    )


def _ledger(value: Any) -> LedgerConfig:
    from guardrail.ledger.database import check_url

    table = _table(value, "ledger")
    _unknown(table, _LEDGER, "ledger")
    if "timezone" in table:
        raise _fail("ledger.timezone", "set timezone at the top: the store's and the ledger's")
    if "url" not in table:
        raise _fail("ledger.url", "is required: sqlite:///path/to/ledger.db or postgresql://...")
    url = _str(table["url"], "ledger.url")
    try:
        check_url(url)
    except ConfigurationError as exc:
        raise _fail("ledger.url", str(exc)) from None
    days = table.get("retention_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
        raise _fail("ledger.retention_days", "must be a whole number of days, at least 1")
    return LedgerConfig(
        url=url,
        retention_days=days,
        spool=_str(table["spool"], "ledger.spool") if "spool" in table else None,
        dashboard_title=_str(table.get("dashboard_title", "guardrail"), "ledger.dashboard_title"),
    )


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, "must be an array of tables ([[keys]])")
    return value


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check a TOML config file."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the config file {str(path)!r}: {exc.strerror}"
        ) from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data)
