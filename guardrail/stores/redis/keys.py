"""Key names: every key of a scope shares its hash tag (``{prefix}:{tag}:{scope}:...``,
percent-escaped), and the day and month windows its hashes are written for."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote, unquote

from guardrail.errors import ConfigurationError
from guardrail.stores.base import Windows

__all__ = ["DayInfo", "KeySpace", "text"]

PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def _escape(value: str) -> str:
    """Percent-escape everything but ``[A-Za-z0-9_.~@+-]``: injective, no ``:{}*?[]``."""
    return quote(value, safe="@+")


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DayInfo:
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


class KeySpace:
    """The names of one prefix's keys, and the windows they belong to (cached: a name is
    built once per scope and day)."""

    def __init__(
        self,
        prefix: str,
        windows: Windows,
        retention_seconds: int,
        hash_tag: Callable[[str], str] | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"invalid Redis key prefix {prefix!r}: 1-64 letters, digits or '_.:-'"
            )
        self.prefix = prefix
        self.windows = windows
        self.retention_seconds = retention_seconds
        self._hash_tag = hash_tag
        self._bases: dict[str, str] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._lives: dict[str, str] = {}
        self._days: dict[str, DayInfo] = {}
        self._today: DayInfo | None = None

    def base(self, scope: str) -> str:
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
        return self.base(scope)

    def check_slots(self, scopes: Sequence[str]) -> None:
        """On Cluster, refuse a call whose scopes live in different slots (callers check
        whether the store is a cluster first: this is not free)."""
        if len(scopes) > 1:
            tags = {self.base(s).split("}", 1)[0] for s in scopes}
            if len(tags) > 1:
                raise ConfigurationError(
                    f"on Redis Cluster every scope of a call must share one hash tag, but "
                    f"{list(scopes)} map to {len(tags)}: pass RedisStore(hash_tag=...) that "
                    "maps a tenant and its parents to one tag (see docs/redis.md)"
                )

    def day(self, day: str) -> DayInfo:
        info = self._days.get(day)
        if info is None:
            if len(self._days) > 64:
                self._days.clear()
            info = self._days[day] = DayInfo(
                date.fromisoformat(day), self.windows.tz, self.retention_seconds
            )
        return info

    def today(self, now: float) -> DayInfo:
        info = self._today
        if info is None or not info.start <= now < info.end:
            info = self._today = self.day(self.windows.keys(now)[0])
        return info

    def day_ttl(self, info: DayInfo, now: float) -> int:
        """TTL of a day hash: the rest of the day, plus the retention."""
        return max(3600, math.ceil(info.end - now) + self.retention_seconds)

    @staticmethod
    def keep_text(info: DayInfo, at_least: float) -> str:
        """Until when a live hash written on ``info``'s day must live: past its month and
        the retention (its month's spend and held counters are there), and ``at_least``."""
        return info.keep_text if at_least <= info.keep else repr(float(at_least))

    def live_key(self, scope: str) -> str:
        key = self._lives.get(scope)
        if key is None:
            key = f"{self.base(scope)}s"
            if len(self._lives) > 10_000:
                self._lives.clear()
            self._lives[scope] = key
        return key

    def claim_key(self, scope: str, key: str) -> str:
        """A claim of ``scope`` (``claim_once``): in the scope's hash slot."""
        return f"{self.base(scope)}c:{_escape(key)}"

    def day_key(self, scope: str, info: DayInfo) -> str:
        """A scope's day hash (cached: built once per scope and day)."""
        key = self._keys.get((scope, info.day))
        if key is None:
            key = f"{self.base(scope)}d:{info.day}"
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[(scope, info.day)] = key
        return key

    def report_keys(self, scopes: Sequence[str], days: list[date]) -> list[tuple[str, date, str]]:
        return [
            (scope, d, f"{self.base(scope)}d:{self.windows.day_key(d)}")
            for scope in scopes
            for d in days
        ]

    def note_key(self, scope: str, key: str) -> str:
        """Where :meth:`RedisStore.remember` keeps a number (the scope's hash tag)."""
        return f"{self.base(scope)}n:{_escape(key)}"

    def records_key(self, kind: str) -> str:
        """The hash of one kind of record (the gateway's keys, its tenant policies)."""
        return f"{self.prefix}:{{records}}:{_escape(kind)}"

    def report_match(self) -> str:
        return f"{self.prefix}:{{*}}:*:d:*"

    def parse_day_key(self, key: Any, days: dict[str, date]) -> tuple[str, date, str] | None:
        name = text(key)
        head = f"{self.prefix}:{{"
        if not name.startswith(head) or "}:" not in name:
            return None
        rest = name[len(head) :].split("}:", 1)[1]
        scope, sep, day = rest.partition(":d:")
        if not sep or day not in days:
            return None
        return unquote(scope), days[day], name
