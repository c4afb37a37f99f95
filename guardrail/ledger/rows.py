"""What the ledger stores of a record or an alert, and writing a batch of them in one
transaction.

A record that the database refuses for what it holds (a value it cannot store) must not
stop the ledger: :func:`write_items` writes a batch, and when the database rejects the
batch for its data (not for being down), writes the items one at a time and hands the
ones it still rejects to ``quarantine``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from guardrail.ledger.database import Database, DatabaseError
from guardrail.stores.base import usd_to_nanos

__all__ = ["LIMIT_FIELDS", "Item", "alert_row", "record_row", "write_items"]

Item = Mapping[str, Any]
"""A queued record (``UsageRecord.to_dict()`` plus its scopes' ``limits``) or an alert
(``{"alert": ..., "at": ..., "alert_id": ...}``)."""

LIMIT_FIELDS = (
    "daily_nanos",
    "monthly_nanos",
    "tokens_per_minute",
    "tokens_per_day",
    "max_in_flight",
)
_INSERT = (
    "INSERT INTO usage_records (record_id, ts, day, tenant, model, requested_model, outcome, "
    "settled, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_nanos, "
    "reserved_nanos, latency_seconds, attempts, request_id, reservation_id, usage_source, "
    "error, record, provider, operation, refusal_limit) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (record_id) DO NOTHING"
)
_INSERT_SCOPE = (
    "INSERT INTO usage_scopes (record_id, scope, day) VALUES (?, ?, ?) "
    "ON CONFLICT (record_id, scope) DO NOTHING"
)
# A scope's caps as its latest call saw them (an older record replayed late does not win).
_UPSERT_LIMITS = (
    "INSERT INTO scope_limits (scope, ts, daily_nanos, monthly_nanos, tokens_per_minute, "
    "tokens_per_day, max_in_flight) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE "
    "SET ts = excluded.ts, daily_nanos = excluded.daily_nanos, "
    "monthly_nanos = excluded.monthly_nanos, tokens_per_minute = excluded.tokens_per_minute, "
    "tokens_per_day = excluded.tokens_per_day, max_in_flight = excluded.max_in_flight "
    "WHERE excluded.ts >= scope_limits.ts"
)
_INSERT_ALERT = (
    "INSERT INTO alert_events (alert_id, ts, rule, scope, tenant, text, event) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO NOTHING"
)


def _text(value: Any) -> Any:
    """Text a database can hold: PostgreSQL refuses NUL in ``TEXT``, and a caller chooses
    the model name it sends (the whole record, as JSON, keeps it escaped)."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def record_row(record: Item, timezone: ZoneInfo) -> tuple[Any, ...]:
    """The ``usage_records`` row of a record (as :meth:`UsageRecord.to_dict` gives it)."""
    day = record.get("day") or datetime.fromtimestamp(record["timestamp"], timezone).strftime(
        "%Y-%m-%d"
    )
    refusal = record.get("refusal") or {}
    return (
        _text(record["record_id"]),
        float(record["timestamp"]),
        day,
        _text(record["tenant"]),
        _text(record["model"]),
        _text(record["requested_model"]),
        record["outcome"],
        1 if record.get("reservation_id") else 0,
        int(record["input_tokens"]),
        int(record["cached_input_tokens"]),
        int(record["output_tokens"]),
        int(record["reasoning_tokens"]),
        usd_to_nanos(Decimal(str(record["cost_usd"]))),
        usd_to_nanos(Decimal(str(record["reserved_usd"]))),
        float(record["latency_seconds"]),
        int(record["attempts"]),
        _text(record.get("request_id")),
        _text(record.get("reservation_id")),
        record.get("usage_source", "none"),
        _text(record.get("error")),
        _json({k: v for k, v in record.items() if k != "limits"}),
        _text(record.get("provider", "")),
        _text(record.get("operation", "chat")),
        _text(refusal.get("limit")),
    )


def alert_row(item: Item) -> tuple[Any, ...]:
    event = item["alert"]
    return (
        _text(item["alert_id"]),
        float(item["at"]),
        _text(event["rule"]),
        _text(event["scope"]),
        _text(event.get("tenant")),
        _text(event.get("text", "")),
        _json(event),
    )


def _statements(
    items: Sequence[Item], timezone: ZoneInfo
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The rows of ``items`` (raises KeyError, ValueError... for an item it cannot read)."""
    records = [item for item in items if "alert" not in item]
    rows = [record_row(r, timezone) for r in records]
    scopes = [
        (row[0], _text(scope), row[2])
        for row, data in zip(rows, records, strict=True)
        for scope in data["scopes"]
    ]
    limits = [
        (_text(limit["scope"]), float(data["timestamp"]), *(limit[n] for n in LIMIT_FIELDS))
        for data in records
        for limit in data.get("limits", ())
    ]
    alerts = [alert_row(item) for item in items if "alert" in item]
    return [
        (_INSERT, rows),
        (_INSERT_SCOPE, scopes),
        (_UPSERT_LIMITS, limits),
        (_INSERT_ALERT, alerts),
    ]


def write_items(
    db: Database,
    items: Sequence[Item],
    timezone: ZoneInfo,
    quarantine: Callable[[Item, str], None],
) -> None:
    """Write ``items`` in one transaction; an item the database (or this code) cannot take
    goes to ``quarantine`` with the reason, and the others are written. Raises
    DatabaseError only when the database is not answering (a retry may succeed)."""
    try:
        db.execute_many(_statements(items, timezone))
        return
    except DatabaseError as exc:
        if exc.retryable:
            raise
    except (KeyError, ValueError, TypeError, OverflowError):
        pass
    for item in items:  # one at a time: find the items that cannot be written
        try:
            db.execute_many(_statements([item], timezone))
        except DatabaseError as exc:
            if exc.retryable:
                raise
            quarantine(item, str(exc))
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            quarantine(item, f"{type(exc).__name__}: {exc}")
