"""Packing the scripts' arguments and unpacking their results, once for the sync and the
async face of the store."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from datetime import date
from typing import Any

from guardrail.errors import ConfigurationError
from guardrail.stores.base import (
    Reservation,
    ReservationRequest,
    ScopeLimits,
    Settlement,
    UsageRow,
    UsageSummary,
    budget_error,
    in_flight_error,
    loop_error,
    nanos_to_usd,
)
from guardrail.stores.redis.keys import DayInfo, KeySpace, text

__all__ = ["Codec", "by_model", "reservation_from"]

_MAX_EXACT = 2**53  # Lua numbers are doubles: integers are exact below this
_LIMITS = (
    ("daily_spend_usd", None),
    ("monthly_spend_usd", None),
    ("tokens_per_minute", 60.0),
    ("tokens_per_day", 86_400.0),
)


def _limit(value: int | None, what: str) -> str:
    if value is None:
        return "-"
    if not 0 <= value < _MAX_EXACT:
        raise ConfigurationError(f"{what} {value} is out of the Redis store's range [0, 2**53)")
    return str(value)


class Codec:
    """Arguments and results of the four scripts, for one key space."""

    def __init__(self, keys: KeySpace, *, cluster: bool, dedup_seconds: int) -> None:
        self.keys = keys
        self.cluster = cluster
        self.dedup_seconds = dedup_seconds
        # id(limits) -> (limits, text): the entry keeps the object alive, so its id is not
        # reused while cached (hashing a dataclass's fields on every call costs more).
        self._limits: dict[int, tuple[ScopeLimits, str]] = {}

    def reserve_call(
        self, request: ReservationRequest, now: float
    ) -> tuple[list[str], list[str], DayInfo]:
        if self.cluster:
            self.keys.check_slots([lim.scope for lim in request.scopes])
        info = self.keys.today(now)
        ttl = request.ttl_seconds
        args = [
            request.id,
            f"{float(now)!r} {_limit(request.cost_nanos, 'cost')} "
            f"{_limit(request.tokens, 'tokens')} {float(ttl)!r} "
            f"{self.keys.keep_text(info, now + ttl + 3600.0)} {self.keys.retention_seconds} "
            f"{info.day} {info.oldest_month}",
        ]
        keys = [self.keys.live_key(lim.scope) for lim in request.scopes]
        args += [self._limits_arg(lim) for lim in request.scopes]
        rule = request.loop
        args.append("-" if rule is None else f"{rule.key} {rule.limit} {float(rule.window)!r}")
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

    def reserve_result(
        self, request: ReservationRequest, now: float, info: DayInfo, result: Any
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
                token=text(result),
                loop_key="" if request.loop is None else request.loop.key,
                loop_window=0.0 if request.loop is None else request.loop.window,
            )
        lim: ScopeLimits = request.scopes[int(result[1]) - 1]
        code = int(result[2])
        if code == 6:
            assert request.loop is not None
            failures, first = int(result[3]), float(text(result[4]))
            raise loop_error(lim.scope, request.loop, failures, first, now)
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
                windows=self.keys.windows,
                now=now,
                requested=request.cost_nanos,
                used=int(result[3]) + int(result[4]),
                cap=cap,
            )
        capacity = lim.tokens_per_minute if code == 3 else lim.tokens_per_day
        assert capacity is not None
        level = float(text(result[3]))
        raise budget_error(
            scope=lim.scope,
            limit=name,
            windows=self.keys.windows,
            now=now,
            requested=request.tokens,
            used=capacity - int(level),
            cap=capacity,
            rate_period=period,
        )

    def settle_call(self, r: Reservation, s: Settlement, now: float) -> tuple[list[str], list[str]]:
        if self.cluster:
            self.keys.check_slots(r.scopes)
        info = self.keys.day(r.day)
        done_ttl = max(3600, math.ceil(info.end - now) + self.dedup_seconds)
        keys = [self.keys.live_key(scope) for scope in r.scopes]  # day and done keys: same slots
        numbers = (
            f"{r.day} {_limit(s.cost_nanos, 'cost')} {s.input_tokens} {s.output_tokens} "
            f"{r.tokens} {self.keys.day_ttl(info, now)} {done_ttl} "
            f"{math.floor(now)} {self.keys.keep_text(info, now + 3600.0)}"
        )
        return keys, [r.id, s.model, r.token, numbers, _loop_arg(r, s.failed, now)]

    def release_call(
        self, r: Reservation, now: float, failed: bool = False
    ) -> tuple[list[str], list[str]]:
        if self.cluster:
            self.keys.check_slots(r.scopes)
        keys = [self.keys.live_key(scope) for scope in r.scopes]
        oldest = self.keys.today(now).oldest_month
        numbers = f"{float(now)!r} {r.day} {self.keys.retention_seconds} {oldest}"
        return keys, [r.id, numbers, _loop_arg(r, failed, now)]

    def extend_call(
        self, r: Reservation, now: float, ttl_seconds: float
    ) -> tuple[list[str], list[str], Reservation]:
        """The extend script's keys and arguments, and the reservation it makes."""
        if self.cluster:
            self.keys.check_slots(r.scopes)
        keys = [self.keys.live_key(scope) for scope in r.scopes]
        args = [r.id, f"{float(now)!r} {float(ttl_seconds)!r}"]
        return keys, args, replace(r, expires_at=now + ttl_seconds)

    def usage_call(
        self, scope: str, day: date | None, now: float
    ) -> tuple[list[str], list[str], str]:
        info = (
            self.keys.today(now) if day is None else self.keys.day(self.keys.windows.day_key(day))
        )
        keys = [self.keys.day_key(scope, info), self.keys.live_key(scope)]
        oldest = self.keys.today(now).oldest_month
        return keys, [f"{float(now)!r} {self.keys.retention_seconds} {oldest}"], info.day

    @staticmethod
    def usage_result(scope: str, day: str, result: Any) -> UsageSummary:
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

    @staticmethod
    def report_rows(found: list[tuple[str, date, str]], hashes: list[Any]) -> list[UsageRow]:
        rows = []
        for (scope, day, _key), raw in zip(found, hashes, strict=True):
            fields = {text(k): text(v) for k, v in (raw or {}).items()}
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
    def spool_record(
        op: str, r: Reservation, s: Settlement | None = None, *, failed: bool = False
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"op": op, "r": asdict(r)}
        if s is not None:
            record["s"] = asdict(s)
        if failed:
            record["failed"] = True
        return record


def _loop_arg(r: Reservation, failed: bool, now: float) -> str:
    if not r.loop_key:
        return "-"
    return f"{r.loop_key} {float(r.loop_window)!r} {1 if failed else 0} {float(now)!r}"


def _fields(flat: Any) -> dict[str, str]:
    items = [text(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _model_totals(fields: dict[str, str]) -> dict[str, tuple[int, int, int, int]]:
    """``{model: (cost nanos, input tokens, output tokens, requests)}`` of a day hash."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for name, value in fields.items():
        if name.startswith("u:"):
            cost, inp, outp, requests = (int(x) for x in value.split())
            out[name[2:]] = (cost, inp, outp, requests)
    return out


def by_model(scope: str, day: str, raw: Any) -> dict[str, UsageSummary]:
    fields = {text(k): text(v) for k, v in (raw or {}).items()}
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


def reservation_from(data: dict[str, Any]) -> Reservation:
    return Reservation(**{**data, "scopes": tuple(data["scopes"])})
