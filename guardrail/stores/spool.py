"""A local spool of store writes that could not be made (the store was down).

Records are JSON lines, ``fsync``'d before ``append`` returns, so a record survives the
process dying right after. Appends from many threads at once are *grouped*: the first
writer takes the file lock and writes every record queued by then with one ``write`` and
one ``fsync``, while the others wait for that write (group commit); so a burst of
settlements with Redis down costs a few fsyncs, not one each behind one lock. ``replay`` applies the
records in order and appends a ``{"done": id}`` line after each one it applied; when every
record is done the file is emptied. A crash in the middle of a replay therefore re-applies
at most the records whose ``done`` line was not written yet: the store's writes are
idempotent per reservation id, so nothing is applied twice and nothing is lost.

Several processes may share one spool file: appends and replays take an exclusive
``flock`` on it (POSIX; elsewhere only the threads of one process are serialised).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Spool"]

_log = logging.getLogger("guardrail")
_RECHECK_SECONDS = 2.0  # how often to look for records spooled by other processes


class _Ticket:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: OSError | None = None


class Spool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._dirty = False
        self._next_check = 0.0
        self._queue: list[tuple[str, _Ticket]] = []
        self._writing = False
        self._turn = threading.Condition(threading.Lock())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+", encoding="utf-8") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (flushed and fsync'd), grouped with any appended by
        other threads meanwhile. Raises ``OSError`` when it could not be written (the
        directory cannot be made, the disk is full): then nothing of it was kept."""
        line = json.dumps({"sid": uuid.uuid4().hex, **record}, separators=(",", ":"))
        ticket = _Ticket()
        with self._turn:
            self._queue.append((line, ticket))
            if self._writing:  # another thread writes: it takes this record too
                while not ticket.done:
                    self._turn.wait()
                if ticket.error is not None:
                    raise ticket.error
                return
            self._writing = True
        try:
            while True:
                with self._turn:
                    batch, self._queue = self._queue, []
                    if not batch:
                        break
                error: OSError | None = None
                try:
                    self._write([line for line, _ in batch])
                except OSError as exc:
                    error = exc
                with self._turn:
                    for _, waiting in batch:
                        waiting.done, waiting.error = True, error
                    self._turn.notify_all()
        finally:
            with self._turn:
                self._writing = False
                for _, waiting in self._queue:  # not written (an unexpected error)
                    waiting.done, waiting.error = True, OSError("spool writer failed")
                self._queue = []
                self._turn.notify_all()
        if ticket.error is not None:
            raise ticket.error

    def _write(self, lines: list[str]) -> None:
        with self._locked() as f:
            _start_line(f)
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
            self._dirty = True

    def pending(self) -> bool:
        """Whether there may be records to replay: cheap enough for every store call."""
        if self._dirty:
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + _RECHECK_SECONDS
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def records(self) -> list[dict[str, Any]]:
        """The records not replayed yet, oldest first."""
        with self._locked() as f:
            return self._unapplied(f)

    def _unapplied(self, f: IO[str], bad: list[str] | None = None) -> list[dict[str, Any]]:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return []  # a device (/dev/full reads zeros forever): nothing was kept there
        f.seek(0)
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(f, 1):
            try:
                item = json.loads(line)
            except ValueError:
                _log.error("guardrail: unreadable line %d in spool %s skipped", number, self.path)
                if bad is not None:
                    bad.append(line if line.endswith("\n") else line + "\n")
                continue
            if "done" in item:
                records.pop(item["done"], None)
            else:
                records[item["sid"]] = item
        return list(records.values())

    def replay(self, apply: Callable[[dict[str, Any]], None]) -> int:
        """Apply every record in order; stop at the first that fails (and re-raise).

        Returns how many records were applied."""
        applied = 0
        bad: list[str] = []
        with self._locked() as f:
            records = self._unapplied(f, bad)
            f.seek(0, os.SEEK_END)
            _start_line(f)
            try:
                for record in records:
                    apply(record)
                    applied += 1
                    f.write(json.dumps({"done": record["sid"]}) + "\n")
                    f.flush()
                if bad:  # never destroy what could not be read: keep it for a person
                    with open(self.path.with_name(self.path.name + ".bad"), "a") as kept:
                        kept.writelines(bad)
                        kept.flush()
                        os.fsync(kept.fileno())
                f.truncate(0)
                self._dirty = False
            finally:
                os.fsync(f.fileno())
        return applied


def _start_line(f: IO[str]) -> None:
    """Begin a new line if the file ends in a torn one (a write cut short by a crash or a
    full disk), so the next record is not glued onto it and lost with it."""
    f.flush()
    size = os.fstat(f.fileno()).st_size
    if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
        f.write("\n")
