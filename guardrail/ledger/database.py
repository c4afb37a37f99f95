"""The ledger's database: SQLite (the embedded default: one file, WAL) or PostgreSQL
(psycopg 3), through their own drivers.

No ORM and no SQLAlchemy: the schema is two tables, every statement is portable between
the two (``INSERT ... ON CONFLICT DO NOTHING``, integer nano-dollars, days as text), and
the only difference is the parameter style, which :meth:`Database.sql` rewrites. The
drivers' own connection handling is enough for one writer thread and short report queries.

URLs: ``sqlite:///path/to/ledger.db`` (``sqlite:///:memory:`` for tests),
``postgresql://user@host:5432/dbname`` (or ``postgres://``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigurationError

__all__ = ["Database", "DatabaseError", "check_url", "connect"]


class DatabaseError(Exception):
    """The ledger's database failed (down, locked, full): the writer spools and retries."""


class Database:
    """One connection, used under a lock (the writer thread and report queries share it)."""

    def __init__(
        self, url: str, connection: Any, kind: str, errors: tuple[type[BaseException], ...]
    ) -> None:
        self.url = url
        self.kind = kind
        self._connection = connection
        self._errors = errors
        self._lock = threading.Lock()

    def sql(self, statement: str) -> str:
        """``statement`` with ``?`` placeholders in this driver's style."""
        return statement.replace("?", "%s") if self.kind == "postgresql" else statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; the rows it returns."""
        with self._lock:
            try:
                cursor = self._connection.cursor()
                cursor.execute(self.sql(statement), tuple(params))
                rows = cursor.fetchall() if cursor.description else []
                self._connection.commit()
                return [tuple(r) for r in rows]
            except self._errors as exc:
                self._rollback()
                raise DatabaseError(f"ledger database {self.kind}: {exc}") from exc

    def execute_many(self, batches: Iterable[tuple[str, Iterable[Sequence[Any]]]]) -> None:
        """Run each statement for each of its rows, all in one transaction (a batch of
        records and their scopes land together or not at all)."""
        with self._lock:
            try:
                cursor = self._connection.cursor()
                for statement, rows in batches:
                    params = [tuple(r) for r in rows]
                    if params:
                        cursor.executemany(self.sql(statement), params)
                self._connection.commit()
            except self._errors as exc:
                self._rollback()
                raise DatabaseError(f"ledger database {self.kind}: {exc}") from exc

    def script(self, statements: Iterable[str]) -> None:
        """Run statements in one transaction (a migration)."""
        with self._lock:
            try:
                cursor = self._connection.cursor()
                for statement in statements:
                    cursor.execute(self.sql(statement))
                self._connection.commit()
            except self._errors as exc:
                self._rollback()
                raise DatabaseError(f"ledger database {self.kind}: {exc}") from exc

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection: nothing to roll back
            self._connection.rollback()

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._connection.close()


def check_url(url: str) -> str:
    """The kind of database ``url`` names (``sqlite`` or ``postgresql``), or a
    ConfigurationError saying what is wrong (an unknown scheme, psycopg not installed)."""
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                "a PostgreSQL ledger needs psycopg: pip install 'guardrail-limits[postgres]'"
            ) from exc
        return "postgresql"
    raise ConfigurationError(
        f"unknown ledger URL {url!r}: use sqlite:///path/to/ledger.db or postgresql://..."
    )


def connect(url: str, *, timeout_seconds: float = 10.0) -> Database:
    """A :class:`Database` for a ledger URL (the connection is opened now).
    ``timeout_seconds``: how long to wait for a locked SQLite file or a PostgreSQL
    connection before the write fails (and is spooled)."""
    if check_url(url) == "sqlite":
        path = url[len("sqlite://") :]
        path = path[1:] if path.startswith("/") else path  # sqlite:///x.db -> x.db
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(path, check_same_thread=False, timeout=timeout_seconds)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the SQLite ledger {path!r}: {exc}") from exc
        return Database(url, connection, "sqlite", (sqlite3.Error,))
    import psycopg

    try:
        server = psycopg.connect(url, connect_timeout=max(1, round(timeout_seconds)))
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to the PostgreSQL ledger: {exc}") from exc
    return Database(url, server, "postgresql", (psycopg.Error,))
