"""Redis store: budgets shared by every process and host that talks to one Redis.

One object serves sync clients (through ``redis.Redis``) and async ones (through
``redis.asyncio.Redis``). Every decision is made in Lua, atomically, by one script per
operation (``lua/*.lua`` beside this module, registered once with ``register_script``, so
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
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from datetime import date, tzinfo
from typing import TYPE_CHECKING, Any

from guardrail._clock import Clock, system_clock
from guardrail.errors import ConfigurationError, StoreUnavailable
from guardrail.stores.base import (
    Reservation,
    ReservationRequest,
    Settlement,
    UsageRow,
    UsageSummary,
    Windows,
    bounded,
    report_range,
)
from guardrail.stores.redis.codec import Codec, by_model
from guardrail.stores.redis.connection import (
    async_factory_for,
    default_spool_path,
    describe_server,
    import_redis,
    location,
)
from guardrail.stores.redis.keys import KeySpace
from guardrail.stores.redis.recovery import Recovery
from guardrail.stores.redis.replay import SpoolReplay
from guardrail.stores.redis.scripts import SCRIPTS, script_source
from guardrail.stores.spool import Spool

if TYPE_CHECKING:
    import redis as redis_lib
    import redis.asyncio as redis_asyncio

__all__ = ["RedisStore", "script_source"]

_log = logging.getLogger("guardrail")

_DAY = 86_400


class RedisStore(SpoolReplay):
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
        redis = import_redis()
        if client is None:
            raise ConfigurationError(
                "RedisStore needs client=redis.Redis(...); or use RedisStore.from_url(url)"
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
        self.keys = KeySpace(prefix, self.windows, self.retention_seconds, hash_tag)
        self.codec = Codec(
            self.keys,
            cluster=isinstance(client, redis.cluster.RedisCluster),
            dedup_seconds=self.dedup_seconds,
        )
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
        self.spool = Spool(spool_path or default_spool_path(prefix, location(client)))
        self.recovery = Recovery(clock, timezone, self.spool)
        self._replay_lock = threading.Lock()
        self._replay_after = 0.0
        self._where = describe_server(client)

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
        redis = import_redis()
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

    def key_prefix(self, scope: str) -> str:
        """The common start of every key of ``scope`` (``{prefix}:{tag}:{scope}:``)."""
        return self.keys.base(scope)

    # -- packing and unpacking (shared by both faces)

    # -- running scripts

    def _call(self, name: str, keys: list[str], args: list[str]) -> Any:
        """EVALSHA straight through the client; on NOSCRIPT (after SCRIPT FLUSH or a
        restart) the registered Script loads the script again and runs it."""
        script = self._scripts[name]
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except self._noscript:
            return script(keys=keys, args=args)

    def _run(self, name: str, keys: list[str], args: list[str]) -> Any:
        if self.recovery.due():
            self.recovery.drain(self._apply, self._down)
        if self._replay_due():
            self._auto_replay()
        result = self._call(name, keys, args)
        if self.recovery.owed():  # Redis just answered: write what it is owed now
            self.recovery.drain(self._apply, self._down)
        self.recovery.answered()
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
                factory = self._async_factory or async_factory_for(self.client)
                client = factory()
                entry = self._async_clients[loop] = (client, self._register_async(client))
        return entry

    async def _arun(self, name: str, keys: list[str], args: list[str]) -> Any:
        if self.recovery.due():
            await asyncio.to_thread(self.recovery.drain, self._apply, self._down)
        if self._replay_due():
            await asyncio.to_thread(self._auto_replay)
        client, scripts = self._async()
        script = scripts[name]
        try:
            result = await client.evalsha(script.sha, len(keys), *keys, *args)
        except self._noscript:
            result = await script(keys=keys, args=args)
        if self.recovery.owed():
            await asyncio.to_thread(self.recovery.drain, self._apply, self._down)
        self.recovery.answered()
        if self._answered():
            await asyncio.to_thread(self._auto_replay)
        return result

    # -- the Store interface, sync

    def reserve(self, request: ReservationRequest) -> Reservation:
        now = self._clock()
        keys, args, info = self.codec.reserve_call(request, now)
        try:
            result = self._run("reserve", keys, args)
        except self._errors as exc:
            raise self._unavailable(request, info.day, info.month, exc) from exc
        return self.codec.reserve_result(request, now, info, result)

    def reserve_offline(self, request: ReservationRequest) -> Reservation:
        """Reserve against what this process alone knows (Redis is down and the guard
        fails open): the spend Redis has not taken yet, and the other calls let through."""
        return self.recovery.reserve_offline(request)

    def _unavailable(
        self, request: ReservationRequest, day: str, month: str, exc: BaseException
    ) -> StoreUnavailable:
        # The script may have run (a timeout after sending): release it once Redis answers.
        self.recovery.unknown_reserve(request, day, month)
        return StoreUnavailable(f"Redis at {self._where} failed the reserve: {exc!r}")

    def settle(self, reservation: Reservation, settlement: Settlement) -> str:
        """Returns where the settlement went: ``"settled"`` (Redis), ``"spooled"`` or
        ``"pending"`` (kept in memory: neither Redis nor the spool could take it). A cost
        past the store's range is charged at its maximum (:func:`bounded`), never dropped."""
        settlement = bounded(settlement)
        keys, args = self.codec.settle_call(reservation, settlement, self._clock())
        try:
            self._run("settle", keys, args)
        except self._errors as exc:
            self.recovery.charge(reservation, settlement)
            return self.recovery.keep(
                self.codec.spool_record("settle", reservation, settlement), exc
            )
        return "settled"

    def release(self, reservation: Reservation, *, failed: bool = False) -> str:
        keys, args = self.codec.release_call(reservation, self._clock(), failed)
        self.recovery.offline.release(reservation, failed=failed)
        try:
            self._run("release", keys, args)
        except self._errors as exc:
            record = self.codec.spool_record("release", reservation, failed=failed)
            return self.recovery.keep(record, exc)
        return "settled"

    def extend(self, reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        """Keep a live call's hold ``ttl_seconds`` more from now (every scope's); None
        when it is not held (settled, released or expired already). A hold made while Redis
        was down (fail-open: ``reserve_offline``) lives in this process's offline store and
        is renewed there."""
        offline = self.recovery.offline.extend(reservation, ttl_seconds)
        if offline is not None:
            return offline
        keys, args, renewed = self.codec.extend_call(reservation, self._clock(), ttl_seconds)
        return renewed if self._run("extend", keys, args) == 1 else None

    def usage(self, scope: str, day: date | None = None) -> UsageSummary:
        now = self._clock()
        keys, args, day_key = self.codec.usage_call(scope, day, now)
        return self.codec.usage_result(scope, day_key, self._run("usage", keys, args))

    def usage_by_model(self, scope: str, day: date | None = None) -> dict[str, UsageSummary]:
        """Per-model usage of one scope in one day."""
        d = day or self.windows.local(self._clock()).date()
        ((_, _, key),) = self.keys.report_keys([scope], [d])
        return by_model(scope, self.windows.day_key(d), self.client.hgetall(key))

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
                for key in self.client.scan_iter(match=self.keys.report_match(), count=1000)
                if (hit := self.keys.parse_day_key(key, by_day)) is not None
            ]
        else:
            found = self.keys.report_keys(scopes, days)
        pipe = self.client.pipeline(transaction=False)
        for _, _, key in found:
            pipe.hgetall(key)
        return self.codec.report_rows(found, pipe.execute() if found else [])

    def claim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        """``SET NX`` with a TTL, in the scope's hash slot: True for the first claim of
        ``key`` by any process sharing this Redis, until the TTL (Redis time) runs out."""
        ttl = max(1, math.ceil(ttl_seconds * 1000))
        return bool(self.client.set(self.keys.claim_key(scope, key), b"1", nx=True, px=ttl))

    def release_claim(self, scope: str, key: str) -> None:
        """Drop a claim whose alert was never delivered: a later event may fire it again."""
        self.client.delete(self.keys.claim_key(scope, key))

    # -- the Store interface, async

    async def areserve(self, request: ReservationRequest) -> Reservation:
        now = self._clock()
        keys, args, info = self.codec.reserve_call(request, now)
        try:
            result = await self._arun("reserve", keys, args)
        except self._errors as exc:
            raise self._unavailable(request, info.day, info.month, exc) from exc
        return self.codec.reserve_result(request, now, info, result)

    async def areserve_offline(self, request: ReservationRequest) -> Reservation:
        return self.recovery.reserve_offline(request)

    async def asettle(self, reservation: Reservation, settlement: Settlement) -> str:
        settlement = bounded(settlement)
        keys, args = self.codec.settle_call(reservation, settlement, self._clock())
        try:
            await self._arun("settle", keys, args)
        except self._errors as exc:
            self.recovery.charge(reservation, settlement)
            record = self.codec.spool_record("settle", reservation, settlement)
            return await asyncio.to_thread(self.recovery.keep, record, exc)
        return "settled"

    async def arelease(self, reservation: Reservation, *, failed: bool = False) -> str:
        keys, args = self.codec.release_call(reservation, self._clock(), failed)
        self.recovery.offline.release(reservation, failed=failed)
        try:
            await self._arun("release", keys, args)
        except self._errors as exc:
            record = self.codec.spool_record("release", reservation, failed=failed)
            return await asyncio.to_thread(self.recovery.keep, record, exc)
        return "settled"

    async def aextend(self, reservation: Reservation, ttl_seconds: float) -> Reservation | None:
        offline = self.recovery.offline.extend(reservation, ttl_seconds)  # as extend
        if offline is not None:
            return offline
        keys, args, renewed = self.codec.extend_call(reservation, self._clock(), ttl_seconds)
        return renewed if await self._arun("extend", keys, args) == 1 else None

    async def ausage(self, scope: str, day: date | None = None) -> UsageSummary:
        now = self._clock()
        keys, args, day_key = self.codec.usage_call(scope, day, now)
        result = await self._arun("usage", keys, args)
        return self.codec.usage_result(scope, day_key, result)

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
            async for key in client.scan_iter(match=self.keys.report_match(), count=1000):
                hit = self.keys.parse_day_key(key, by_day)
                if hit is not None:
                    found.append(hit)
        else:
            found = self.keys.report_keys(scopes, days)
        pipe = client.pipeline(transaction=False)
        for _, _, key in found:
            pipe.hgetall(key)
        return self.codec.report_rows(found, await pipe.execute() if found else [])

    async def aclaim_once(self, scope: str, key: str, ttl_seconds: float) -> bool:
        ttl = max(1, math.ceil(ttl_seconds * 1000))
        client = self._async()[0]
        return bool(await client.set(self.keys.claim_key(scope, key), b"1", nx=True, px=ttl))

    # -- notes: small numbers with a TTL, in the scope's hash slot

    def remember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        self.client.set(self.keys.note_key(scope, key), int(value), ex=max(1, int(ttl_seconds)))

    def recall(self, scope: str, key: str) -> int | None:
        found = self.client.get(self.keys.note_key(scope, key))
        return None if found is None else int(found)

    async def aremember(self, scope: str, key: str, value: int, ttl_seconds: int) -> None:
        client = self._async()[0]
        await client.set(self.keys.note_key(scope, key), int(value), ex=max(1, int(ttl_seconds)))

    async def arecall(self, scope: str, key: str) -> int | None:
        found = await self._async()[0].get(self.keys.note_key(scope, key))
        return None if found is None else int(found)

    # -- records: small texts shared by every process (the gateway's keys and policies)

    async def aput_record(self, kind: str, name: str, value: str) -> None:
        await self._async()[0].hset(self.keys.records_key(kind), name, value)

    async def aget_record(self, kind: str, name: str) -> str | None:
        found = await self._async()[0].hget(self.keys.records_key(kind), name)
        return None if found is None else _decoded(found)

    async def adelete_record(self, kind: str, name: str) -> bool:
        return bool(await self._async()[0].hdel(self.keys.records_key(kind), name))

    async def alist_records(self, kind: str) -> dict[str, str]:
        found = await self._async()[0].hgetall(self.keys.records_key(kind))
        return {_decoded(k): _decoded(v) for k, v in found.items()}

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


def _decoded(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
