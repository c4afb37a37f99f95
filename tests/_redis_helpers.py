"""Helpers for the Redis store tests: stores of every kind, a twin that runs every call on
the store under test and on a MemoryStore and compares the outcomes, and a private
redis-server that a test may stop and restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardrail import BudgetExceeded, MemoryStore
from tests.conftest import REDIS_HOST, REDIS_PORT

REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
KINDS = [
    "memory",
    "fakeredis",
    pytest.param("redis", marks=pytest.mark.redis),
]


def unique_prefix() -> str:
    return f"gt-{uuid.uuid4().hex[:12]}"


def delete_prefix(client: Any, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def make_store(kind: str, clock: Any, tmp_path: Path, **options: Any) -> Any:
    """A store of ``kind`` with the given clock; Redis stores get a unique prefix and a
    spool under ``tmp_path``. Call ``cleanup(store)`` when done."""
    if kind == "memory":
        return MemoryStore(clock=clock, **options)
    from guardrail.stores.redis import RedisStore

    spool = tmp_path / f"spool-{uuid.uuid4().hex[:6]}.jsonl"
    if kind == "fakeredis":
        pytest.importorskip("lupa", reason="fakeredis runs Lua with lupa (fakeredis[lua])")
        import fakeredis

        server = fakeredis.FakeServer()
        return RedisStore(
            fakeredis.FakeRedis(server=server),
            async_client=fakeredis.FakeAsyncRedis(server=server),
            prefix=unique_prefix(),
            clock=clock,
            spool_path=spool,
            **options,
        )
    assert kind == "redis"
    return RedisStore.from_url(
        REDIS_URL, prefix=unique_prefix(), clock=clock, spool_path=spool, **options
    )


def cleanup(store: Any) -> None:
    client = getattr(store, "client", None)
    if client is not None:
        try:
            delete_prefix(client, store.prefix)
        finally:
            store.close()


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or ``("refused", the BudgetExceeded's fields)``."""
    try:
        return "ok", fn()
    except BudgetExceeded as exc:
        return "refused", dict(vars(exc))


@dataclass
class Twin:
    """Runs each call on ``store`` and on a MemoryStore reference; asserts equal outcomes."""

    store: Any
    ref: MemoryStore

    def __call__(self, method: str, *args: Any) -> tuple[str, Any]:
        got = outcome(lambda: getattr(self.store, method)(*args))
        want = outcome(lambda: getattr(self.ref, method)(*args))
        assert got == want, f"{method}{args}: store gave {got}, memory gave {want}"
        return got


# -- a private redis-server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server of the test's own on a free port; ``stop`` and ``start`` it at will.
    With ``durable=True`` it keeps an append-only file, so data survives a restart."""

    def __init__(self, workdir: Path, *, durable: bool = True) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _pings(self.port):  # a ping loop, not a sleep
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: a clean shutdown that flushes the append-only file
            proc.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- child processes (started with the 'spawn' context: these must be importable) ------------

HELLO = [{"role": "user", "content": "Hello there"}]
START_TS = 1795435200.0  # 2026-11-23 12:00 UTC: every process's ManualClock starts here


def guarded_client(url: str, base_url: str, prefix: str, cap: str, records: list[Any]) -> Any:
    import openai

    from guardrail import Guard, ManualClock, Policy
    from guardrail.stores.redis import RedisStore

    store = RedisStore.from_url(
        url,
        prefix=prefix,
        clock=ManualClock(START_TS),
        spool_path=Path(tempfile.gettempdir()) / f"{prefix}-{os.getpid()}.jsonl",
    )
    guard = Guard(
        Policy(daily_spend_usd=Decimal(cap), loop_limit=None), store=store, sinks=[records.append]
    )
    return guard.wrap(openai.OpenAI(base_url=base_url, api_key="test", max_retries=0))


def crowd_worker(
    url: str, base_url: str, prefix: str, cap: str, threads: int, calls: int
) -> list[tuple[str, str, str | None]]:
    """``threads`` threads, ``calls`` guarded calls each, all against one tenant's cap;
    returns every usage record as (outcome, cost in USD, reservation id)."""
    from guardrail import BudgetExceeded

    records: list[Any] = []
    client = guarded_client(url, base_url, prefix, cap, records).for_tenant("crowd")
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        for _ in range(calls):
            with contextlib.suppress(BudgetExceeded):
                client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=100)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return [(r.outcome, str(r.cost_usd), r.reservation_id) for r in records]


def doomed_worker(url: str, base_url: str, prefix: str, cap: str) -> None:
    """Makes one guarded call; the test kills this process while the call is in flight."""
    client = guarded_client(url, base_url, prefix, cap, [])
    client.for_tenant("doomed").chat.completions.create(
        model="gpt-4o", messages=HELLO, max_tokens=100
    )
    os._exit(3)  # not reached: the process is killed between reserve and settle


# -- a private Redis Cluster ---------------------------------------------------------------


def _cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as a dict (empty if the node does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            data = b""
            while b"\r\n" not in data or len(data) < _bulk_end(data):
                chunk = sock.recv(4096)
                if not chunk:
                    return {}
                data += chunk
    except (OSError, ValueError):
        return {}
    body = data.split(b"\r\n", 1)[1].decode(errors="replace")
    return dict(line.split(":", 1) for line in body.split("\r\n") if ":" in line)


def _bulk_end(data: bytes) -> int:
    """Where a RESP bulk string reply (``$<n>\\r\\n<n bytes>\\r\\n``) ends."""
    header = data.split(b"\r\n", 1)[0]
    if not header.startswith(b"$"):
        raise ValueError(f"not a bulk reply: {header!r}")
    return len(header) + 2 + int(header[1:]) + 2


class RedisCluster:
    """A Redis Cluster of ``masters`` private redis-server processes (no replicas) on free
    ports, each in its own directory under ``workdir``, joined with
    ``redis-cli --cluster create``. ``start`` returns once every node reports
    ``cluster_state:ok`` with all slots assigned and every node known; ``stop`` ends every
    process, also after a failed start. Without redis-server or redis-cli the test is
    skipped (it fails when ``CI`` is set)."""

    def __init__(self, workdir: Path, *, masters: int = 3) -> None:
        missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
        if missing:
            message = f"{' and '.join(missing)} not installed: cannot start a Redis Cluster"
            if os.environ.get("CI"):
                pytest.fail(f"{message} (CI is set: Redis tests must run)", pytrace=False)
            pytest.skip(message)
        ports: set[int] = set()
        while len(ports) < 2 * masters:  # a client port and a cluster bus port per node
            ports.add(free_port())
        picked = sorted(ports)
        self.ports = picked[:masters]
        self.bus_ports = picked[masters:]
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self, timeout: float = 15.0) -> RedisCluster:
        try:
            self._start(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, deadline: float) -> None:
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            folder = self.workdir / f"node-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            args += ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
            args += ["--cluster-config-file", str(folder / f"nodes-{port}.conf")]
            args += ["--dir", str(folder), "--save", "", "--appendonly", "no"]
            args += ["--daemonize", "no", "--loglevel", "warning"]
            self.procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port, proc in zip(self.ports, self.procs, strict=True):
            while not _pings(port):  # a ping loop, not a sleep
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node on port {port} did not start")
                time.sleep(0.005)
        create = ["redis-cli", "--cluster", "create"]
        create += [f"{self.host}:{port}" for port in self.ports]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(
                create,
                capture_output=True,
                text=True,
                timeout=max(0.1, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("redis-cli --cluster create did not finish in time") from exc
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        want = {"cluster_state": "ok", "cluster_slots_assigned": "16384"}
        want["cluster_known_nodes"] = str(len(self.ports))
        while True:  # poll CLUSTER INFO on every node until all agree the cluster is up
            infos = [_cluster_info(port) for port in self.ports]
            if all(all(info.get(k) == v for k, v in want.items()) for info in infos):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok: {infos}")
            time.sleep(0.01)

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
