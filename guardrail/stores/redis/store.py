"""Redis store: budgets shared by every process and host that talks to one Redis.

One object serves sync clients (through ``redis.Redis``) and async ones (through
``redis.asyncio.Redis``). Every decision is made in Lua, atomically, by one script per
operation (``guardrail/stores/lua/*.lua``, registered once with ``register_script``, so
they run with EVALSHA and are reloaded after ``SCRIPT FLUSH`` or a Redis restart); the
Python here only packs arguments and unpacks results, once for both faces.

Keys of one scope share a hash tag: ``{prefix}:{tag}:{scope}:...`` where ``scope`` (and
``tag``, the scope itself unless ``hash_tag`` maps it elsewhere) are percent-escaped, so no
id can reach another's keys or break out of its hash tag. See ``docs/redis.md``.

Day and month windows are computed here from the injected clock (not Redis ``TIME``) and
passed to the scripts as key names, so tests move time without sleeping.

Settlements and releases that cannot be written (Redis down) go to a local spool file and
are replayed before the next call once Redis answers, or by :meth:`RedisStore.replay_spool`;
settling is idempotent per reservation id, so a replay is applied once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import date, datetime, timedelta, tzinfo
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from guardrail._clock import Clock, system_clock
from guardrail.errors import ConfigurationError
from guardrail.stores.base import (
    Reservation,
    ReservationRequest,
    ScopeLimits,
    Settlement,
    UsageRow,
    UsageSummary,
    Windows,
    budget_error,
    in_flight_error,
    nanos_to_usd,
    report_range,
)
from guardrail.stores.spool import Spool

if TYPE_CHECKING:
    import redis as redis_lib
    import redis.asyncio as redis_asyncio

__all__ = ["RedisStore", "script_source"]

_log = logging.getLogger("guardrail")

SCRIPTS = ("reserve", "settle", "release", "usage")
_INCLUDE = re.compile(r"^--! include (\S+)[ \t]*$", re.MULTILINE)
_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_MAX_EXACT = 2**53  # Lua numbers are doubles: integers are exact below this
_LIMITS = (
    ("daily_spend_usd", None),
    ("monthly_spend_usd", None),
    ("tokens_per_minute", 60.0),
    ("tokens_per_day", 86_400.0),
)
_DAY = 86_400
_REPLAY_BACKOFF = 1.0  # seconds between replay attempts while Redis keeps failing


@functools.cache
def script_source(name: str) -> str:
    """The Lua text of one script, with its ``--! include`` lines expanded."""
    folder = resources.files("guardrail.stores.redis") / "lua"
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: folder.joinpath(m.group(1)).read_text(encoding="utf-8"), text)


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the redis package: pip install 'guardrail-limits[redis]'"
        ) from exc
    return redis


def _escape(value: str) -> str:
    """Percent-escape everything but ``[A-Za-z0-9_.~@+-]``: injective, no ``:{}*?[]``."""
    return quote(value, safe="@+")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _limit(value: int | None, what: str) -> str:
    if value is None:
        return "-"
    if not 0 <= value < _MAX_EXACT:
        raise ConfigurationError(f"{what} {value} is out of the Redis store's range [0, 2**53)")
    return str(value)


def _default_spool_path(prefix: str, location: str) -> Path:
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


def _location(client: Any) -> str:
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


def _async_factory_for(client: Any) -> Callable[[], Any]:
    """An async client for the same server as a sync one (the common connection options);
    for a ``redis.cluster.RedisCluster``, a ``redis.asyncio.cluster.RedisCluster``."""
    redis = _import_redis()
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


class _DayInfo:
    """When a calendar day and its month end, in POSIX seconds; ``keep``: until when a
    live hash written that day must live (its month, plus the retention), and its text."""

    __slots__ = ("day", "end", "keep", "keep_text", "month", "month_end", "oldest_month", "start")

    def __init__(self, day: date, tz: tzinfo, retention_seconds: int) -> None:
        nxt = day + timedelta(days=1)
        self.day = day.strftime("%Y-%m-%d")
        self.month = day.strftime("%Y-%m")
        self.start = datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
        self.end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        self.month_end = datetime(year, month, 1, tzinfo=tz).timestamp()
        self.keep = self.month_end + retention_seconds
        self.keep_text = repr(self.keep)
        # Months before this one are past the retention: scans drop their spend.
        self.oldest_month = (day - timedelta(days=retention_seconds // 86_400)).strftime("%Y-%m")


class RedisStore:
    """Budgets in Redis, shared by every process and host; the :class:`~guardrail.Store`
    interface, sync and async.

    Build it with :meth:`from_url` or from clients::

        store = RedisStore.from_url("redis://localhost:6379/0", prefix="myapp")
        store = RedisStore(client=redis.Redis(...), async_client=redis.asyncio.Redis(...))
        guard = Guard(policy, store=store)

    * ``prefix``: the first part of every key (letters, digits, ``_.:-``).
    * ``clock``: POSIX seconds; windows, bucket refills and expiries all use it (not Redis
      ``TIME``), so inject a :class:`~guardrail.ManualClock` in tests.
    * ``timezone``: where calendar days and months begin (UTC by default).
    * ``hash_tag``: maps a scope id to the hash tag of its keys (default: the scope
      itself). On Redis Cluster, every scope of one call must map to the same tag.
    * ``spool_path``: where settlements wait while Redis is down (default: a file per
      prefix and server under ``~/.cache/guardrail/spool``).
    * ``retention_days``: how long day aggregates (usage reports) outlive their day, and
      how long the marker of a reservation that expired unsettled is kept (its late
      settlement is applied once).
    * ``dedup_seconds``: how long after its day the id of a settlement that found nothing
      held (the call was let through while Redis was down, or Redis lost its data since)
      is remembered, so that a replay of it is applied once (default: the retention).
      Any other settlement is recognised by its hold, for as long as its scope is kept.
    * ``async_client``: the ``redis.asyncio.Redis`` for the async methods; by default one
      is made (per event loop) with the sync client's connection options.
    """

    def __init__(
        self,
        client: redis_lib.Redis | Any = None,
        *,
        prefix: str = "guardrail",
        async_client: redis_asyncio.Redis | Any = None,
        clock: Clock = system_clock,
        timezone: str | tzinfo = "UTC",
        hash_tag: Callable[[str], str] | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        retention_days: int = 35,
        dedup_seconds: int | None = None,
        async_factory: Callable[[], Any] | None = None,
    ) -> None:
        redis = _import_redis()
        if client is None:
            raise ConfigurationError(
                "RedisStore needs client=redis.Redis(...); or use RedisStore.from_url(url)"
            )
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"invalid Redis key prefix {prefix!r}: 1-64 letters, digits or '_.:-'"
            )
        if dedup_seconds is None:
            dedup_seconds = int(retention_days) * _DAY
        if retention_days < 1 or dedup_seconds < 60:
            raise ConfigurationError("retention_days must be >= 1 and dedup_seconds >= 60")
        self.client = client
        self.prefix = prefix
        self.windows = Windows(timezone)
        self.retention_seconds = int(retention_days) * _DAY
        self.dedup_seconds = int(dedup_seconds)
        self._clock = clock
        self._hash_tag = hash_tag
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._down: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}
        self._async_fixed: tuple[Any, dict[str, Any]] | None = None
        if async_client is not None:
            self._async_fixed = (async_client, self._register_async(async_client))
        self._async_factory = async_factory
        self._async_clients: dict[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = {}
        self._async_lock = threading.Lock()
        self._bases: dict[str, str] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._lives: dict[str, str] = {}
        # id(limits) -> (limits, text): the entry keeps the object alive, so its id is not
        # reused while cached (hashing a dataclass's fields on every call costs more).
        self._limits: dict[int, tuple[ScopeLimits, str]] = {}
        self._days: dict[str, _DayInfo] = {}
        self._today: _DayInfo | None = None
        self.spool = Spool(spool_path or _default_spool_path(prefix, _location(client)))
        self._replay_lock = threading.Lock()
        self._replay_after = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "guardrail",
        clock: Clock = system_clock,
        timezone: str | tzinfo = "UTC",
        hash_tag: Callable[[str], str] | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        retention_days: int = 35,
        dedup_seconds: int | None = None,
        **redis_options: Any,
    ) -> RedisStore:
        """A store on ``redis://[[user]:password@]host:port/db`` (or ``rediss://``,
        ``unix://``). ``redis_options`` go to ``redis.Redis.from_url`` (and its async twin).

        Defaults differ from redis-py's so that a dead Redis fails a call fast instead of
        holding it for seconds: 1 s to connect, 2 s per command, one immediate retry after
        reconnecting (safe: every script is idempotent per reservation id)."""
        redis = _import_redis()
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, **redis_options}
        client = redis.Redis.from_url(url, **{"retry": Retry(NoBackoff(), 1), **options})

        def async_factory() -> Any:
            return redis.asyncio.Redis.from_url(
                url, **{"retry": AsyncRetry(NoBackoff(), 1), **options}
            )

        return cls(
            client,
            prefix=prefix,
            clock=clock,
            timezone=timezone,
            hash_tag=hash_tag,
            spool_path=spool_path,
            retention_days=retention_days,
            dedup_seconds=dedup_seconds,
            async_factory=async_factory,
        )

    def now(self) -> float:
        return self._clock()

    # -- keys and windows

    def _base(self, scope: str) -> str:
        base = self._bases.get(scope)
        if base is None:
            if not isinstance(scope, str) or not scope:
                raise ConfigurationError(f"invalid scope id {scope!r}")
            tag = scope if self._hash_tag is None else self._hash_tag(scope)
            base = f"{self.prefix}:{{{_escape(tag)}}}:{_escape(scope)}:"
            if len(self._bases) > 10_000:
                self._bases.clear()
            self._bases[scope] = base
        return base

    def key_prefix(self, scope: str) -> str:
        """The common start of every key of ``scope`` (``{prefix}:{tag}:{scope}:``)."""
        return self._base(scope)

    def _check_slots(self, scopes: Sequence[str]) -> None:
        """On Cluster, refuse a call whose scopes live in different slots (callers check
        ``self._cluster`` first: this is not free)."""
        if len(scopes) > 1:
            tags = {self._base(s).split("}", 1)[0] for s in scopes}
            if len(tags) > 1:
                raise ConfigurationError(
                    f"on Redis Cluster every scope of a call must share one hash tag, but "
                    f"{list(scopes)} map to {len(tags)}: pass RedisStore(hash_tag=...) that "
                    "maps a tenant and its parents to one tag (see docs/redis.md)"
                )

    def _day(self, day: str) -> _DayInfo:
        info = self._days.get(day)
        if info is None:
            if len(self._days) > 64:
                self._days.clear()
            info = self._days[day] = _DayInfo(
                date.fromisoformat(day), self.windows.tz, self.retention_seconds
            )
        return info

    def _today_info(self, now: float) -> _DayInfo:
        info = self._today
        if info is None or not info.start <= now < info.end:
            info = self._today = self._day(self.windows.keys(now)[0])
        return info

    def _day_ttl(self, info: _DayInfo, now: float) -> int:
        """TTL of a day hash: the rest of the day, plus the retention."""
        return max(3600, math.ceil(info.end - now) + self.retention_seconds)

    @staticmethod
    def _keep_text(info: _DayInfo, at_least: float) -> str:
        """Until when a live hash written on ``info``'s day must live: past its month and
        the retention (its month's spend and held counters are there), and ``at_least``."""
        return info.keep_text if at_least <= info.keep else repr(float(at_least))

    def _live_key(self, scope: str) -> str:
        key = self._lives.get(scope)
        if key is None:
            key = f"{self._base(scope)}s"
            if len(self._lives) > 10_000:
                self._lives.clear()
            self._lives[scope] = key
        return key

    def _day_key(self, scope: str, info: _DayInfo) -> str:
        """A scope's day hash (cached: built once per scope and day)."""
        key = self._keys.get((scope, info.day))
        if key is None:
            key = f"{self._base(scope)}d:{info.day}"
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[(scope, info.day)] = key
        return key

    # -- packing and unpacking (shared by both faces)

    def _reserve_call(
        self, request: ReservationRequest, now: float
    ) -> tuple[list[str], list[str], _DayInfo]:
        if self._cluster:
            self._check_slots([lim.scope for lim in request.scopes])
        info = self._today_info(now)
        ttl = request.ttl_seconds
        args = [
            request.id,
            f"{float(now)!r} {_limit(request.cost_nanos, 'cost')} "
            f"{_limit(request.tokens, 'tokens')} {float(ttl)!r} "
            f"{self._keep_text(info, now + ttl + 3600.0)} {self.retention_seconds} {info.day} "
            f"{info.oldest_month}",
        ]
        keys = [self._live_key(lim.scope) for lim in request.scopes]
        args += [self._limits_arg(lim) for lim in request.scopes]
        return keys, args, info

    def _limits_arg(self, lim: ScopeLimits) -> str:
        """``"<daily> <monthly> <per minute> <per day> <in flight>"`` (cached: policies
        repeat)."""
        entry = self._limits.get(id(lim))
        if entry is not None and entry[0] is lim:
            return entry[1]
        text = (
            f"{_limit(lim.daily_nanos, 'daily cap')} "
            f"{_limit(lim.monthly_nanos, 'monthly cap')} "
            f"{_limit(lim.tokens_per_minute, 'tokens_per_minute')} "
            f"{_limit(lim.tokens_per_day, 'tokens_per_day')} "
            f"{_limit(lim.max_in_flight, 'max_in_flight')}"
        )
        if len(self._limits) > 10_000:
            self._limits.clear()
        self._limits[id(lim)] = (lim, text)
        return text

    def _reserve_result(
        self, request: ReservationRequest, now: float, info: _DayInfo, result: Any
    ) -> Reservation:
        if not isinstance(result, list):  # the generation of the first scope's live hash
            return Reservation(
                id=request.id,
                scopes=tuple([lim.scope for lim in request.scopes]),
                cost_nanos=request.cost_nanos,
                tokens=request.tokens,
                day=info.day,
                month=info.month,
                created_at=now,
                expires_at=now + request.ttl_seconds,
                model=request.model,
                token=_text(result),
            )
        lim: ScopeLimits = request.scopes[int(result[1]) - 1]
        code = int(result[2])
        if code == 5:
            assert lim.max_in_flight is not None
            raise in_flight_error(scope=lim.scope, in_flight=int(result[3]), cap=lim.max_in_flight)
        name, period = _LIMITS[code - 1]
        if period is None:
            cap = lim.daily_nanos if code == 1 else lim.monthly_nanos
            assert cap is not None
            raise budget_error(
                scope=lim.scope,
                limit=name,
                windows=self.windows,
                now=now,
                requested=request.cost_nanos,
                used=int(result[3]) + int(result[4]),
                cap=cap,
            )
        capacity = lim.tokens_per_minute if code == 3 else lim.tokens_per_day
        assert capacity is not None
        level = float(_text(result[3]))
        raise budget_error(
            scope=lim.scope,
            limit=name,
            windows=self.windows,
            now=now,
            requested=request.tokens,
            used=capacity - int(level),
            cap=capacity,
            rate_period=period,
        )

    def _settle_call(
        self, r: Reservation, s: Settlement, now: float
    ) -> tuple[list[str], list[str]]:
        if self._cluster:
            self._check_slots(r.scopes)
        info = self._day(r.day)
        done_ttl = max(3600, math.ceil(info.end - now) + self.dedup_seconds)
        keys = [self._live_key(scope) for scope in r.scopes]  # day and done keys: same slots
        numbers = (
            f"{r.day} {_limit(s.cost_nanos, 'cost')} {s.input_tokens} {s.output_tokens} "
            f"{r.tokens} {self._day_ttl(info, now)} {done_ttl} "
            f"{math.floor(now)} {self._keep_text(info, now + 3600.0)}"
        )
        return keys, [r.id, s.model, r.token, numbers]

    def _release_call(self, r: Reservation, now: float) -> tuple[list[str], list[str]]:
        if self._cluster:
            self._check_slots(r.scopes)
        keys = [self._live_key(scope) for scope in r.scopes]
        oldest = self._today_info(now).oldest_month
        return keys, [r.id, f"{float(now)!r} {r.day} {self.retention_seconds} {oldest}"]

    def _usage_call(
        self, scope: str, day: date | None, now: float
    ) -> tuple[list[str], list[str], str]:
        info = self._today_info(now) if day is None else self._day(self.windows.day_key(day))
        keys = [self._day_key(scope, info), self._live_key(scope)]
        oldest = self._today_info(now).oldest_month
        return keys, [f"{float(now)!r} {self.retention_seconds} {oldest}"], info.day

    @staticmethod
    def _usage_result(scope: str, day: str, result: Any) -> UsageSummary:
        totals = _model_totals(_fields(result[0]))
        return UsageSummary(
            scope=scope,
            day=day,
            spent_usd=nanos_to_usd(sum(t[0] for t in totals.values())),
            reserved_usd=nanos_to_usd(int(result[2])),
            month_spent_usd=nanos_to_usd(int(result[1])),
            input_tokens=sum(t[1] for t in totals.values()),
            output_tokens=sum(t[2] for t in totals.values()),
            requests=sum(t[3] for t in totals.values()),
        )

    def _report_keys(self, scopes: Sequence[str], days: list[date]) -> list[tuple[str, date, str]]:
        return [
            (scope, d, f"{self._base(scope)}d:{self.windows.day_key(d)}")
            for scope in scopes
            for d in days
        ]

    def _report_match(self) -> str:
        return f"{self.prefix}:{{*}}:*:d:*"

    def _parse_day_key(self, key: Any, days: dict[str, date]) -> tuple[str, date, str] | None:
        text = _text(key)
        head = f"{self.prefix}:{{"
        if not text.startswith(head) or "}:" not in text:
            return None
        rest = text[len(head) :].split("}:", 1)[1]
        scope, sep, day = rest.partition(":d:")
        if not sep or day not in days:
            return None
        return unquote(scope), days[day], text

    @staticmethod
    def _report_rows(found: list[tuple[str, date, str]], hashes: list[Any]) -> list[UsageRow]:
        rows = []
        for (scope, day, _key), raw in zip(found, hashes, strict=True):
            fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
            for model, (cost, inp, out, req) in _model_totals(fields).items():
                rows.append(
                    UsageRow(
                        scope=scope,
                        day=day,
                        model=model,
                        cost_usd=nanos_to_usd(cost),
                        input_tokens=inp,
                        output_tokens=out,
                        requests=req,
                    )
                )
        return sorted(rows)

    @staticmethod
    def _record(op: str, r: Reservation, s: Settlement | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"op": op, "r": asdict(r)}
        if s is not None:
            record["s"] = asdict(s)
        return record

    # -- running scripts

    # Spooled writes are replayed before a call (so it sees them) unless the last replay
    # failed: after a connection failure, right after the next call that succeeds; after
    # any other failure, at most once per _REPLAY_BACKOFF seconds.

    def _replay_due(self) -> bool:
        return self.spool.pending() and time.monotonic() >= self._replay_after

    def _answered(self) -> bool:
        """Redis just answered: whether a replay waits for that."""
        if self._replay_after == math.inf:
            self._replay_after = 0.0
            return True
        return False

    def _call(self, name: str, keys: list[str], args: list[str]) -> Any:
        """EVALSHA straight through the client; on NOSCRIPT (after SCRIPT FLUSH or a
        restart) the registered Script loads the script again and runs it."""
        script = self._scripts[name]
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except self._noscript:
            return script(keys=keys, args=args)

    def _run(self, name: str, keys: list[str], args: list[str]) -> Any:
        if self._replay_due():
            self._auto_replay()
        result = self._call(name, keys, args)
        if self._answered():
            self._auto_replay()
        return result

    def _register_async(self, client: Any) -> dict[str, Any]:
        return {name: client.register_script(script_source(name)) for name in SCRIPTS}

    def _async(self) -> tuple[Any, dict[str, Any]]:
        if self._async_fixed is not None:
            return self._async_fixed
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(loop)
        if entry is None:
            with self._async_lock:
                for old in [lp for lp in self._async_clients if lp.is_closed()]:
                    del self._async_clients[old]
                factory = self._async_factory or _async_factory_for(self.client)
                client = factory()
                entry = self._async_clients[loop] = (client, self._register_async(client))
        return entry

    async def _arun(self, name: str, keys: list[str], args: list[str]) -> Any:
        if self._replay_due():
            await asyncio.to_thread(self._auto_replay)
        client, scripts = self._async()
        script = scripts[name]
        try:
            result = await client.evalsha(script.sha, len(keys), *keys, *args)
        except self._noscript:
            result = await script(keys=keys, args=args)
        if self._answered():
            await asyncio.to_thread(self._auto_replay)
        return result

    # -- the Store interface, sync

    def reserve(self, request: ReservationRequest) -> Reservation:
        now = self._clock()
        keys, args, info = self._reserve_call(request, now)
        return self._reserve_result(request, now, info, self._run("reserve", keys, args))

    def settle(self, reservation: Reservation, settlement: Settlement) -> None:
        keys, args = self._settle_call(reservation, settlement, self._clock())
        try:
            self._run("settle", keys, args)
        except self._errors as exc:
            self._spool_write(self._record("settle", reservation, settlement), exc)

    def release(self, reservation: Reservation) -> None:
        keys, args = self._release_call(reservation, self._clock())
        try:
            self._run("release", keys, args)
        except self._errors as exc:
            self._spool_write(self._record("release", reservation), exc)

    def usage(self, scope: str, day: date | None = None) -> UsageSummary:
        now = self._clock()
        keys, args, day_key = self._usage_call(scope, day, now)
        return self._usage_result(scope, day_key, self._run("usage", keys, args))

    def usage_by_model(self, scope: str, day: date | None = None) -> dict[str, UsageSummary]:
        """Per-model usage of one scope in one day."""
        d = day or self.windows.local(self._clock()).date()
        ((_, _, key),) = self._report_keys([scope], [d])
        return _by_model(scope, self.windows.day_key(d), self.client.hgetall(key))

    def usage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        """Usage per scope, per model, per day from ``start`` to ``end`` inclusive (default:
        today). ``scopes=None`` SCANs the keyspace for every scope with usage in the range."""
        days = report_range(self.windows, self._clock(), start, end)
        if scopes is None:
            by_day = {self.windows.day_key(d): d for d in days}
            found = [
                hit
                for key in self.client.scan_iter(match=self._report_match(), count=1000)
                if (hit := self._parse_day_key(key, by_day)) is not None
            ]
        else:
            found = self._report_keys(scopes, days)
        pipe = self.client.pipeline(transaction=False)
        for _, _, key in found:
            pipe.hgetall(key)
        return self._report_rows(found, pipe.execute() if found else [])

    # -- the Store interface, async

    async def areserve(self, request: ReservationRequest) -> Reservation:
        now = self._clock()
        keys, args, info = self._reserve_call(request, now)
        return self._reserve_result(request, now, info, await self._arun("reserve", keys, args))

    async def asettle(self, reservation: Reservation, settlement: Settlement) -> None:
        keys, args = self._settle_call(reservation, settlement, self._clock())
        try:
            await self._arun("settle", keys, args)
        except self._errors as exc:
            record = self._record("settle", reservation, settlement)
            await asyncio.to_thread(self._spool_write, record, exc)

    async def arelease(self, reservation: Reservation) -> None:
        keys, args = self._release_call(reservation, self._clock())
        try:
            await self._arun("release", keys, args)
        except self._errors as exc:
            await asyncio.to_thread(self._spool_write, self._record("release", reservation), exc)

    async def ausage(self, scope: str, day: date | None = None) -> UsageSummary:
        now = self._clock()
        keys, args, day_key = self._usage_call(scope, day, now)
        result = await self._arun("usage", keys, args)
        return self._usage_result(scope, day_key, result)

    async def ausage_report(
        self,
        scopes: Sequence[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[UsageRow]:
        days = report_range(self.windows, self._clock(), start, end)
        client = self._async()[0]
        if scopes is None:
            by_day = {self.windows.day_key(d): d for d in days}
            found = []
            async for key in client.scan_iter(match=self._report_match(), count=1000):
                hit = self._parse_day_key(key, by_day)
                if hit is not None:
                    found.append(hit)
        else:
            found = self._report_keys(scopes, days)
        pipe = client.pipeline(transaction=False)
        for _, _, key in found:
            pipe.hgetall(key)
        return self._report_rows(found, await pipe.execute() if found else [])

    # -- the spool

    def _spool_write(self, record: dict[str, Any], exc: BaseException) -> None:
        self.spool.append(record)
        _log.error(
            "guardrail: Redis failed on %s of reservation %s (%r); spooled to %s for replay",
            record["op"],
            record["r"]["id"],
            exc,
            self.spool.path,
        )

    def _apply(self, record: dict[str, Any]) -> None:
        r = _reservation(record["r"])
        now = self._clock()
        if record["op"] == "settle":
            keys, args = self._settle_call(r, Settlement(**record["s"]), now)
            self._call("settle", keys, args)
        elif record["op"] == "release":
            keys, args = self._release_call(r, now)
            self._call("release", keys, args)
        else:  # pragma: no cover - only this module writes records
            raise ValueError(f"unknown spool record {record!r}")

    def replay_spool(self) -> int:
        """Apply the spooled settlements and releases (oldest first); returns how many.
        Raises the store's error, keeping the rest, if Redis fails again."""
        with self._replay_lock:
            return self.spool.replay(self._apply)

    async def areplay_spool(self) -> int:
        return await asyncio.to_thread(self.replay_spool)

    def _auto_replay(self) -> None:
        if not self._replay_lock.acquire(blocking=False):
            return  # another thread is replaying
        try:
            applied = self.spool.replay(self._apply)
        except Exception as exc:  # never fail the call that happened to trigger a replay
            down = isinstance(exc, self._down)
            self._replay_after = math.inf if down else time.monotonic() + _REPLAY_BACKOFF
            _log.error("guardrail: spool replay stopped (%r); will retry", exc)
        else:
            if applied:
                _log.warning("guardrail: replayed %d spooled store writes", applied)
        finally:
            self._replay_lock.release()

    # -- lifecycle

    def close(self) -> None:
        """Close the sync client's connections."""
        self.client.close()

    async def aclose(self) -> None:
        """Close the async clients' connections (call it before the event loop ends)."""
        entries = [self._async_fixed] if self._async_fixed else []
        with self._async_lock:
            entries += list(self._async_clients.values())
            self._async_clients.clear()
        for client, _ in entries:
            await client.aclose()


def _fields(flat: Any) -> dict[str, str]:
    items = [_text(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _model_totals(fields: dict[str, str]) -> dict[str, tuple[int, int, int, int]]:
    """``{model: (cost nanos, input tokens, output tokens, requests)}`` of a day hash."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for name, value in fields.items():
        if name.startswith("u:"):
            cost, inp, outp, requests = (int(x) for x in value.split())
            out[name[2:]] = (cost, inp, outp, requests)
    return out


def _by_model(scope: str, day: str, raw: Any) -> dict[str, UsageSummary]:
    fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
    return {
        model: UsageSummary(
            scope=scope,
            day=day,
            spent_usd=nanos_to_usd(cost),
            reserved_usd=nanos_to_usd(0),
            month_spent_usd=nanos_to_usd(0),
            input_tokens=inp,
            output_tokens=out,
            requests=req,
        )
        for model, (cost, inp, out, req) in sorted(_model_totals(fields).items())
    }


def _reservation(data: dict[str, Any]) -> Reservation:
    return Reservation(**{**data, "scopes": tuple(data["scopes"])})
