"""The ledger's database: SQLite (the embedded default: one file, WAL) or PostgreSQL
(psycopg 3), through their own drivers.

No ORM and no SQLAlchemy: the schema is a few tables, every statement is portable between
the two (``INSERT ... ON CONFLICT``, integer nano-dollars, days as text), and the only
difference is the parameter style, which :meth:`Database.sql` rewrites. The drivers' own
connection handling is enough for one writer thread and short report queries.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (four slashes, as
SQLAlchemy writes them), ``sqlite:///:memory:`` for tests, and
``postgresql://user@host:5432/dbname`` (or ``postgres://``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigurationError

__all__ = ["Database", "DatabaseError", "Transaction", "check_url", "connect", "sqlite_path"]


class DatabaseError(Exception):
    """The ledger's database failed. ``retryable``: it is down, locked or full (the writer
    spools and retries); False when it refused what it was given (a value it cannot
    store: retrying would fail again)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(" ".join(message.split()))  # drivers' messages span lines
        self.retryable = retryable


class Transaction:
    """Statements (``?`` placeholders) run in one open transaction."""

    def __init__(self, cursor: Any, sql: Callable[[str], str]) -> None:
        self._cursor, self._sql = cursor, sql

    def run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns."""
        self._cursor.execute(self._sql(statement), tuple(params))
        return [tuple(r) for r in self._cursor.fetchall()] if self._cursor.description else []

    def run_many(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        params = [tuple(r) for r in rows]
        if params:
            self._cursor.executemany(self._sql(statement), params)


class Database:
    """One connection, used under a lock (the writer thread and report queries share it).
    ``data_errors``: the driver's exceptions that mean "this value", not "this database"."""

    def __init__(
        self,
        url: str,
        connection: Any,
        kind: str,
        errors: tuple[type[BaseException], ...],
        data_errors: tuple[type[BaseException], ...],
    ) -> None:
        self.url = url
        self.kind = kind
        self._connection = connection
        self._errors = errors
        self._data_errors = data_errors
        self._lock = threading.Lock()

    def sql(self, statement: str) -> str:
        """``statement`` with ``?`` placeholders in this driver's style."""
        return statement.replace("?", "%s") if self.kind == "postgresql" else statement

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises. On
        SQLite a writing transaction starts with ``BEGIN IMMEDIATE`` (its write lock, and
        DDL inside it is transactional: Python's sqlite3 would commit each statement)."""
        with self._lock:
            try:
                cursor = self._connection.cursor()
                if write and self.kind == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")
                yield Transaction(cursor, self.sql)
                self._connection.commit()
            except self._errors as exc:
                self._rollback()
                retryable = not isinstance(exc, self._data_errors)
                raise DatabaseError(
                    f"ledger database {self.kind}: {exc}", retryable=retryable
                ) from exc
            except BaseException:
                self._rollback()
                raise

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; the rows it returns."""
        with self.transaction(write=False) as tx:
            return tx.run(statement, params)

    def execute_many(self, batches: Iterable[tuple[str, Iterable[Sequence[Any]]]]) -> None:
        """Run each statement for each of its rows, all in one transaction (a batch of
        records and their scopes land together or not at all)."""
        with self.transaction() as tx:
            for statement, rows in batches:
                tx.run_many(statement, rows)

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


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite://`` URL: ``sqlite:///x.db`` is ``x.db`` (relative),
    ``sqlite:////var/x.db`` is ``/var/x.db``."""
    path = url[len("sqlite://") :]
    return path[1:] if path.startswith("/") else path


def connect(url: str, *, timeout_seconds: float = 10.0, bounded: bool = False) -> Database:
    """A :class:`Database` for a ledger URL (the connection is opened now).
    ``timeout_seconds``: how long to wait for a locked SQLite file or a PostgreSQL
    connection before the write fails (and is spooled). ``bounded`` (the writer's): on
    PostgreSQL every statement, and every wait for a lock, is held to it too, and a dead
    peer is found by TCP keepalives, so a write never blocks the writer for good (a table
    locked by a migration or an open transaction, a half-open connection)."""
    if check_url(url) == "sqlite":
        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(path, check_same_thread=False, timeout=timeout_seconds)
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed batch survives a power cut (it is no longer spooled).
            connection.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the SQLite ledger {path!r}: {exc}") from exc
        data = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)
        return Database(url, connection, "sqlite", (sqlite3.Error,), data)
    import psycopg

    seconds = max(1, round(timeout_seconds))
    limits: dict[str, Any] = {}
    if bounded:
        ms = max(1, round(timeout_seconds * 1000))
        limits = {
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 3,
        }
    try:
        server = psycopg.connect(url, connect_timeout=seconds, **limits)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to the PostgreSQL ledger: {exc}") from exc
    return Database(
        url, server, "postgresql", (psycopg.Error,), (psycopg.DataError, psycopg.IntegrityError)
    )
