"""Redis clients: the redis package (an extra), the async twin of a sync client, and
where a server's spool file lives."""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from guardrail.errors import ConfigurationError

__all__ = [
    "async_factory_for",
    "default_spool_path",
    "describe_server",
    "import_redis",
    "location",
]


def import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the redis package: pip install 'guardrail-limits[redis]'"
        ) from exc
    return redis


def default_spool_path(prefix: str, location: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(cache) / "guardrail" / "spool"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".probe"
        probe.touch()
        probe.unlink()
    except OSError:
        folder = Path(tempfile.gettempdir()) / "guardrail-spool"
    digest = hashlib.sha1(location.encode()).hexdigest()[:10]
    return folder / f"{quote(prefix, safe='')}-{digest}.jsonl"


def location(client: Any) -> str:
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:  # a RedisCluster: named after its first node, not "?:?/0"
        return f"cluster:{min(manager.startup_nodes)}"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{where}/{kwargs.get('db', 0)}"


_ASYNC_OPTIONS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "client_name",
    "health_check_interval",
    "encoding",
    "encoding_errors",
    "decode_responses",
    "credential_provider",
    "protocol",
)


def async_factory_for(client: Any) -> Callable[[], Any]:
    """An async client for the same server as a sync one (the common connection options);
    for a ``redis.cluster.RedisCluster``, a ``redis.asyncio.cluster.RedisCluster``."""
    redis = import_redis()
    if isinstance(client, redis.cluster.RedisCluster):
        return _async_cluster_factory_for(client)
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    options = {k: kwargs[k] for k in _ASYNC_OPTIONS if k in kwargs}
    if "path" in kwargs:
        options["unix_socket_path"] = kwargs["path"]
    if issubclass(pool.connection_class, redis.SSLConnection):
        options["ssl"] = True
        options.update({k: v for k, v in kwargs.items() if k.startswith("ssl_")})
    return lambda: redis.asyncio.Redis(**options)


def _async_cluster_factory_for(client: Any) -> Callable[[], Any]:
    """An async Cluster client that starts from the nodes the sync one knows, with its
    connection options (those the async client takes: no ``db``, no ``ssl_ca_path``...)."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    manager = client.nodes_manager
    kwargs = manager.connection_kwargs
    accepted = inspect.signature(RedisCluster).parameters
    options = {
        k: v
        for k, v in kwargs.items()
        if (k in _ASYNC_OPTIONS or k == "ssl" or k.startswith("ssl_"))
        and k in accepted
        and k not in ("host", "port", "db")
    }
    nodes = [(node.host, node.port) for node in manager.startup_nodes.values()]
    return lambda: RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options)


def describe_server(client: Any) -> str:
    """``host:port/db (socket timeout 2.0 s, connect timeout 1.0 s)``, for error messages."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    timeouts = ", ".join(
        f"{label} {kwargs[key]} s"
        for key, label in (
            ("socket_timeout", "socket timeout"),
            ("socket_connect_timeout", "connect timeout"),
        )
        if kwargs.get(key) is not None
    )
    return location(client) + (f" ({timeouts})" if timeouts else "")
