"""The ledger's schema, versioned: forward migrations applied in order, each in one
transaction, the version kept in ``guardrail_schema``.

``usage_records``: one row per :class:`~guardrail.UsageRecord` (refusals included), keyed
by its ``record_id`` (so writing it twice is a no-op), money in integer nano-dollars, the
store's day as text, the whole record as JSON. ``usage_scopes``: every scope a record was
charged to (the tenant, its parents, the global scope), for per-scope reports that equal
the store's. ``scope_limits``: each scope's caps as its latest call saw them.
``alert_events``: the alerts fired.
"""

from __future__ import annotations

from guardrail.ledger.database import Database, Transaction

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "version"]

MIGRATIONS: list[list[str]] = [
    # 1: the records, their scopes, the indexes of the reports
    [
        """CREATE TABLE IF NOT EXISTS usage_records (
            record_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            day TEXT NOT NULL,
            tenant TEXT NOT NULL,
            model TEXT NOT NULL,
            requested_model TEXT NOT NULL,
            outcome TEXT NOT NULL,
            settled INTEGER NOT NULL,
            input_tokens BIGINT NOT NULL,
            cached_input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            cost_nanos BIGINT NOT NULL,
            reserved_nanos BIGINT NOT NULL,
            latency_seconds DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL,
            request_id TEXT,
            reservation_id TEXT,
            usage_source TEXT NOT NULL,
            error TEXT,
            record TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS usage_scopes (
            record_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            day TEXT NOT NULL,
            PRIMARY KEY (record_id, scope)
        )""",
        "CREATE INDEX IF NOT EXISTS usage_records_day ON usage_records (day)",
        "CREATE INDEX IF NOT EXISTS usage_records_tenant_day ON usage_records (tenant, day)",
        "CREATE INDEX IF NOT EXISTS usage_scopes_scope_day ON usage_scopes (scope, day)",
    ],
    # 2: what metrics and the dashboard group by (provider, operation, refusal limit)
    [
        "ALTER TABLE usage_records ADD COLUMN provider TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE usage_records ADD COLUMN operation TEXT NOT NULL DEFAULT 'chat'",
        "ALTER TABLE usage_records ADD COLUMN refusal_limit TEXT",
        "CREATE INDEX IF NOT EXISTS usage_records_model_day ON usage_records (model, day)",
    ],
    # 3: the latest caps of every scope (what the dashboard shows spend against), and the
    # alerts fired (what it lists beside the refusals)
    [
        """CREATE TABLE IF NOT EXISTS scope_limits (
            scope TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            daily_nanos BIGINT,
            monthly_nanos BIGINT,
            tokens_per_minute BIGINT,
            tokens_per_day BIGINT,
            max_in_flight BIGINT
        )""",
        """CREATE TABLE IF NOT EXISTS alert_events (
            alert_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            rule TEXT NOT NULL,
            scope TEXT NOT NULL,
            tenant TEXT,
            text TEXT NOT NULL,
            event TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS alert_events_ts ON alert_events (ts)",
        "CREATE INDEX IF NOT EXISTS usage_records_outcome_ts ON usage_records (outcome, ts)",
    ],
    # 4: what retention deletes by
    ["CREATE INDEX IF NOT EXISTS usage_scopes_day ON usage_scopes (day)"],
]
SCHEMA_VERSION = len(MIGRATIONS)


_LOCK = 0x67726C64  # PostgreSQL advisory lock id ("grld"): one migrator at a time


def version(db: Database) -> int:
    """The schema version of ``db`` (0: empty)."""
    with db.transaction() as tx:
        return _version(tx)


def _version(tx: Transaction) -> int:
    tx.run("CREATE TABLE IF NOT EXISTS guardrail_schema (version INTEGER NOT NULL)")
    rows = tx.run("SELECT MAX(version) FROM guardrail_schema")
    found = rows[0][0] if rows else None
    return int(found) if found is not None else 0


def migrate(db: Database, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations ``db`` lacks, up to ``target``, in one transaction; returns the
    version reached. Processes migrating at once take turns (PostgreSQL: an advisory lock;
    SQLite: its write lock), and the later ones find nothing left to do."""
    with db.transaction() as tx:
        if db.kind == "postgresql":
            # A migration may take longer than a writer's bound on its statements; its waits
            # for locks (another migrator's, a table's) keep the bound, if any: the writer
            # spools and tries again rather than block.
            tx.run("SET LOCAL statement_timeout = 0")
            tx.run("SELECT pg_advisory_xact_lock(?)", (_LOCK,))
        current = _version(tx)
        for number in range(current + 1, target + 1):
            for statement in MIGRATIONS[number - 1]:
                tx.run(statement)
            tx.run("INSERT INTO guardrail_schema (version) VALUES (?)", (number,))
    return max(current, target)
