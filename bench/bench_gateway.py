"""The gateway (``guardrail serve``) against calling the upstream directly, and against
LiteLLM Proxy on the same upstream, in the same run.

Processes, each its own (so that none shares another's GIL):

* the fake OpenAI upstream (:class:`guardrail.testing.FakeOpenAIServer`);
* the guardrail gateway: ``guardrail serve --config <generated TOML>``, one uvicorn worker,
  ``memory://`` store, two keys (``load``: a $1,000,000 daily cap, so every answer carries
  the remaining-budget headers; ``budget``: ``daily_spend_usd = 0.10``);
* LiteLLM Proxy (``litellm --config <generated YAML>``, one worker, no database), from its
  own virtualenv given by ``--litellm``: ``gpt-4o-mini`` with no budget, and a
  ``gpt-4o-budget`` deployment with ``max_budget: 0.10`` (its deployment budget, the mode
  that runs without a database), priced per token as guardrail's catalog prices gpt-4o.

This process is the load generator (aiohttp, one event loop). For each concurrency it warms
every contender up, then runs them in alternating rounds (direct, gateway, LiteLLM, direct,
...) of ``--requests`` chat completions each (or ``--seconds``, whichever ends first) and
reports, as the median of the rounds: latency p50 and p99, requests per second, the latency
each proxy adds to the direct call's (its p50 minus the direct p50 *of the same round*), and
the CPU time the proxy's process (and its children) spent per request, read from /proc.
1 / (CPU per request) is what one fully busy worker could serve: the "per worker" figure.

Then the overspend test: 50 concurrent requests, each worth a known amount (a ~3,000-token
prompt on gpt-4o, ``max_tokens = 20``), against a $0.10 cap: how many each let through,
how many the budget covers, and the money over.

Goals (issue 15): added p50 under 1 ms at concurrency 1, at least 10x LiteLLM Proxy's
requests per second per worker, 0 overspend.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_gateway.py \\
          --litellm /work/litellm-venv [--requests 2000] [--seconds 5] [--rounds 3] \\
          [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")

import aiohttp

import guardrail
from guardrail.catalog.pricing import prices_per_million

UPSTREAM = """
import sys
from guardrail.testing import FakeOpenAIServer
server = FakeOpenAIServer(reply="The report says revenue grew.").start()
print(server.base_url, flush=True)
sys.stdin.read()  # until the parent closes it
"""

# The floor under any Python gateway built like guardrail's: uvicorn (httptools, uvloop) and
# Starlette in front of an aiohttp client, relaying the body both ways and nothing else.
FLOOR = """
import contextlib, sys
import aiohttp, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

upstream, port = sys.argv[1], int(sys.argv[2])
session = None

@contextlib.asynccontextmanager
async def lifespan(app):
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    yield
    await session.close()

async def chat(request):
    body = await request.body()
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    async with session.post(upstream + "/chat/completions", data=body, headers=headers) as r:
        raw = await r.read()
    return Response(raw, status_code=r.status, media_type="application/json")

async def health(request):
    return Response("ok")

routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)]
app = Starlette(routes=routes, lifespan=lifespan)
uvicorn.run(app, port=port, log_level="warning", access_log=False)
"""

MESSAGES = [
    {"role": "system", "content": "You are a terse analyst."},
    {"role": "user", "content": "Summarise the quarterly report in one sentence, please."},
]
LOAD_BODY = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()

BUDGET_USD = Decimal("0.10")
BUDGET_MODEL = "gpt-4o"
BUDGET_CALLS = 50
# A prompt of ~3,000 tokens: at gpt-4o's prices ($2.50 / $10 per million) one call costs
# ~$0.0075, so $0.10 covers 13 calls (the issue's own LiteLLM measurement).
BUDGET_PROMPT = " ".join(f"item {i % 97} of the ledger," for i in range(425))

LITELLM_PIN = "1.106.2"  # bench/requirements.txt
LOAD_KEY, BUDGET_KEY = "sk-bench-load", "sk-bench-budget"
# LiteLLM refuses to start without a master key (and it is the key every call presents).
LITELLM_KEY = "sk-" + secrets.token_hex(32)
UPSTREAM_KEY_ENV = "GR_BENCH_UPSTREAM_KEY"
TICK = os.sysconf("SC_CLK_TCK")


def budget_body(model: str) -> bytes:
    messages = [{"role": "user", "content": BUDGET_PROMPT}]
    return json.dumps({"model": model, "messages": messages, "max_tokens": 20}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
        children.setdefault(ppid, []).append(int(entry))
        times[int(entry)] = (utime + stime) / TICK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += children.get(current, [])
    return total


def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float, name: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer {url} within {seconds:.0f} s")


@contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def gateway_config(upstream: str, metrics: bool = True) -> str:
    return f"""
store = "memory://"
metrics = {"true" if metrics else "false"}

[upstream.openai]
base_url = "{upstream}"
api_key_env = "{UPSTREAM_KEY_ENV}"

[policy]
daily_spend_usd = 1000000

[[keys]]
key = "{LOAD_KEY}"
tenant = "load"

[[keys]]
key = "{BUDGET_KEY}"
tenant = "budget"
[keys.policy]
daily_spend_usd = "{BUDGET_USD}"
"""


def litellm_config(upstream: str) -> str:
    input_usd, output_usd = prices_per_million(BUDGET_MODEL)
    assert input_usd is not None and output_usd is not None
    return f"""
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}
      api_key: sk-upstream
  - model_name: {BUDGET_MODEL}-budget
    litellm_params:
      model: openai/{BUDGET_MODEL}
      api_base: {upstream}
      api_key: sk-upstream
      max_budget: {BUDGET_USD}
      budget_duration: 1d
    model_info:
      input_cost_per_token: {input_usd / 1_000_000}
      output_cost_per_token: {output_usd / 1_000_000}
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: {LITELLM_KEY}
"""


@dataclass
class Contender:
    name: str
    url: str
    headers: dict[str, str]
    pid: int | None = None
    rounds: list[Round] = field(default_factory=list)


@dataclass
class Round:
    rps: float
    p50: float
    p99: float
    cpu_per_request: float | None


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def load(
    session: aiohttp.ClientSession,
    contender: Contender,
    body: bytes,
    requests: int,
    seconds: float,
    concurrency: int,
) -> Round:
    latencies: list[float] = []
    failures: list[str] = []
    remaining = iter(range(requests))
    deadline = time.perf_counter() + seconds
    headers = {"content-type": "application/json", **contender.headers}

    async def worker() -> None:
        for _ in remaining:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            async with session.post(contender.url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {(await response.text())[:300]}")
            latencies.append(time.perf_counter() - start)

    cpu = cpu_seconds(contender.pid) if contender.pid else None
    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    if failures:
        raise RuntimeError(f"{contender.name}: {len(failures)} failed, first: {failures[0]}")
    spent = cpu_seconds(contender.pid) - cpu if contender.pid and cpu is not None else None
    latencies.sort()
    return Round(
        rps=len(latencies) / wall,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        cpu_per_request=None if spent is None else spent / len(latencies),
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


async def measure(
    contenders: list[Contender], args: argparse.Namespace
) -> list[tuple[int, list[Contender]]]:
    out = []
    for concurrency in args.concurrency:
        fresh = [Contender(c.name, c.url, c.headers, c.pid) for c in contenders]
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for contender in fresh:  # warm up: connections, caches, lazy imports
                await load(session, contender, LOAD_BODY, 200, 10.0, concurrency)
            for _ in range(args.rounds):
                for contender in fresh:
                    contender.rounds.append(
                        await load(
                            session,
                            contender,
                            LOAD_BODY,
                            args.requests,
                            args.seconds,
                            concurrency,
                        )
                    )
        out.append((concurrency, fresh))
    return out


@dataclass
class Overspend:
    name: str
    through: int
    refused: int
    statuses: dict[str, int]


async def overspend(name: str, url: str, headers: dict[str, str], body: bytes) -> Overspend:
    """Fire ``BUDGET_CALLS`` requests at once; count the answers by status (and, for an
    error, the ``error.type`` of its body)."""
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    sent = {"content-type": "application/json", **headers}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> str:
            async with session.post(url, data=body, headers=sent) as response:
                raw = await response.read()
                if response.status == 200:
                    return "200"
                try:
                    kind = json.loads(raw)["error"]["type"]
                except (ValueError, KeyError, TypeError):
                    kind = "?"
                return f"{response.status} {kind}"

        for status in await asyncio.gather(*(one() for _ in range(BUDGET_CALLS))):
            statuses[status] = statuses.get(status, 0) + 1
    through = statuses.get("200", 0)
    return Overspend(name, through, BUDGET_CALLS - through, statuses)


def cost_of_one(upstream: str) -> tuple[Decimal, int, int]:
    """What one overspend-test call costs at gpt-4o's catalog prices (asked of the upstream
    directly): (USD, prompt tokens, completion tokens)."""
    request = urllib.request.Request(
        upstream + "/chat/completions",
        data=budget_body(BUDGET_MODEL),
        headers={"content-type": "application/json", "authorization": "Bearer x"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        usage = json.loads(response.read())["usage"]
    input_usd, output_usd = prices_per_million(BUDGET_MODEL)
    assert input_usd is not None and output_usd is not None
    cost = (usage["prompt_tokens"] * input_usd + usage["completion_tokens"] * output_usd) / (
        1_000_000
    )
    return cost, usage["prompt_tokens"], usage["completion_tokens"]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def report(results: list[tuple[int, list[Contender]]]) -> None:
    for concurrency, contenders in results:
        if concurrency == 1:
            ours, base = contenders[1].rounds, contenders[0].rounds
            gap = median([a.p50 - b.p50 for a, b in zip(ours, base, strict=True)])
            verdict = "met" if gap < 1e-3 else "NOT met"
            print(f"goal: gateway adds under 1 ms p50 at concurrency 1: {ms(gap)}, {verdict}")
    rows = []
    for concurrency, contenders in results:
        direct = contenders[0]
        for contender in contenders:
            r = contender.rounds
            added = [mine.p50 - base.p50 for mine, base in zip(r, direct.rounds, strict=True)]
            cpus = [x.cpu_per_request for x in r if x.cpu_per_request is not None]
            cpu = median(cpus) if cpus else None
            rows.append(
                [
                    str(concurrency),
                    contender.name,
                    ms(median([x.p50 for x in r])),
                    ms(median([x.p99 for x in r])),
                    "-" if contender is direct else f"+{ms(median(added))}",
                    f"{median([x.rps for x in r]):,.0f}",
                    f"{min(x.rps for x in r):,.0f}-{max(x.rps for x in r):,.0f}",
                    "-" if cpu is None else ms(cpu),
                    "-" if not cpu else f"{1 / cpu:,.0f}",
                ]
            )
    headers = [
        "conc.",
        "path",
        "p50",
        "p99",
        "added p50",
        "req/s",
        "range",
        "proxy CPU/req",
        "req/s per busy core",
    ]
    print(table(headers, rows))
    for concurrency, contenders in results:
        by_name = {c.name: c for c in contenders}
        if "LiteLLM Proxy" not in by_name:
            continue
        mine, theirs = by_name["guardrail gateway"].rounds, by_name["LiteLLM Proxy"].rounds
        rps = median([a.rps / b.rps for a, b in zip(mine, theirs, strict=True)])
        cpu = median(
            [
                b.cpu_per_request / a.cpu_per_request
                for a, b in zip(mine, theirs, strict=True)
                if a.cpu_per_request and b.cpu_per_request
            ]
        )
        print(
            f"concurrency {concurrency}: guardrail ÷ LiteLLM Proxy, req/s {rps:.1f}x, "
            f"CPU per request {cpu:.1f}x less (median of the rounds' ratios)"
        )


def litellm_executable(given: str | None) -> Path | None:
    if not given:
        return None
    path = Path(given)
    for candidate in (path / "bin" / "litellm", path / "litellm", path):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--litellm", help="LiteLLM's virtualenv (or its litellm executable)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0, help="cap on one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--skip-load", action="store_true", help="only the overspend test")
    parser.add_argument(
        "--no-references",
        dest="references",
        action="store_false",
        help="leave out the gateway with metrics = false and the bare relay",
    )
    args = parser.parse_args()

    litellm = litellm_executable(args.litellm)
    if litellm is None:
        print(
            "LiteLLM Proxy: not found"
            + (f" at {args.litellm}" if args.litellm else " (no --litellm given)")
            + "; skipping it. To include it: python3 -m venv /work/litellm-venv && "
            f"/work/litellm-venv/bin/pip install 'litellm[proxy]=={LITELLM_PIN}' "
            "(bench/requirements.txt), then --litellm /work/litellm-venv",
            flush=True,
        )

    workdir = Path(tempfile.mkdtemp(prefix="gr-bench-gateway-"))
    env = {**os.environ, UPSTREAM_KEY_ENV: "sk-upstream"}
    upstream_proc = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert upstream_proc.stdout is not None
        upstream = upstream_proc.stdout.readline().strip()
        guardrail_bin = shutil.which("guardrail", path=str(Path(sys.executable).parent))
        serve = (
            [guardrail_bin]
            if guardrail_bin
            else [sys.executable, "-c", "from guardrail.cli import main; main()"]
        ) + ["serve"]
        ports = {name: free_port() for name in ("gateway", "no metrics", "floor")}
        for name, metrics in (("guardrail.toml", True), ("no-metrics.toml", False)):
            (workdir / name).write_text(gateway_config(upstream, metrics))

        def serving(config: str, port: str) -> list[str]:
            return [*serve, "--config", str(workdir / config), "--port", str(ports[port])]

        with contextlib.ExitStack() as stack:
            gateway = stack.enter_context(
                process(
                    serving("guardrail.toml", "gateway"),
                    env,
                    workdir / "gateway.log",
                )
            )
            children = [("the gateway", ports["gateway"], gateway)]
            if args.references:
                no_metrics = stack.enter_context(
                    process(
                        serving("no-metrics.toml", "no metrics"),
                        env,
                        workdir / "no-metrics.log",
                    )
                )
                floor = stack.enter_context(
                    process(
                        [sys.executable, "-c", FLOOR, upstream, str(ports["floor"])],
                        env,
                        workdir / "floor.log",
                    )
                )
                children += [
                    ("the gateway without metrics", ports["no metrics"], no_metrics),
                    ("the bare relay", ports["floor"], floor),
                ]
            for name, port, child in children:
                wait_until_up(f"http://127.0.0.1:{port}/health", child, 30, name)
            gw_port = ports["gateway"]
            contenders = [
                Contender("direct", upstream + "/chat/completions", {"authorization": "Bearer x"}),
                Contender(
                    "guardrail gateway",
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                    {"authorization": f"Bearer {LOAD_KEY}"},
                    gateway.pid,
                ),
            ]
            if args.references:
                contenders += [
                    Contender(
                        "gateway, metrics = false",
                        f"http://127.0.0.1:{ports['no metrics']}/v1/chat/completions",
                        {"authorization": f"Bearer {LOAD_KEY}"},
                        no_metrics.pid,
                    ),
                    Contender(
                        "bare relay (no guardrail)",
                        f"http://127.0.0.1:{ports['floor']}/v1/chat/completions",
                        {},
                        floor.pid,
                    ),
                ]
            with litellm_running(litellm, upstream, env, workdir) as lite:
                version = "-"
                if lite is not None:
                    lite_proc, lite_port, version = lite
                    lite_url = f"http://127.0.0.1:{lite_port}/v1/chat/completions"
                    contenders.append(
                        Contender(
                            "LiteLLM Proxy",
                            lite_url,
                            {"authorization": f"Bearer {LITELLM_KEY}"},
                            lite_proc.pid,
                        )
                    )
                print(
                    f"python {platform.python_version()} · {os.cpu_count()} cores · guardrail "
                    f"{guardrail.__version__} · aiohttp {aiohttp.__version__} · LiteLLM "
                    f"{version} · load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
                    f" · {args.requests} requests or {args.seconds:g} s x {args.rounds} rounds",
                    flush=True,
                )
                if not args.skip_load:
                    report(asyncio.run(measure(contenders, args)))
                cost, prompt_tokens, completion_tokens = cost_of_one(upstream)
                covered = int(BUDGET_USD // cost)
                print(
                    f"\noverspend: {BUDGET_CALLS} concurrent calls, {prompt_tokens} + "
                    f"{completion_tokens} tokens of {BUDGET_MODEL} each = ${cost:.6f}; "
                    f"${BUDGET_USD} covers {covered}"
                )
                tests = [
                    (
                        "guardrail gateway",
                        contenders[1].url,
                        {"authorization": f"Bearer {BUDGET_KEY}"},
                        budget_body(BUDGET_MODEL),
                    )
                ]
                if lite is not None:
                    tests.append(
                        (
                            "LiteLLM Proxy",
                            lite_url,
                            {"authorization": f"Bearer {LITELLM_KEY}"},
                            budget_body(f"{BUDGET_MODEL}-budget"),
                        )
                    )
                rows = []
                for name, url, headers, body in tests:
                    result = asyncio.run(overspend(name, url, headers, body))
                    spent = cost * result.through
                    over = max(Decimal(0), spent - BUDGET_USD)
                    rows.append(
                        [
                            name,
                            str(result.through),
                            str(covered),
                            f"${spent:.4f}",
                            f"${over:.4f}",
                            f"+{over / BUDGET_USD:.0%}",
                            ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses.items())),
                        ]
                    )
                print(
                    table(
                        ["proxy", "through", "covered", "spent", "over", "over %", "statuses"],
                        rows,
                    )
                )
                print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        assert upstream_proc.stdin is not None
        upstream_proc.stdin.close()
        upstream_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def litellm_running(
    litellm: Path | None, upstream: str, env: dict[str, str], workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, str] | None]:
    if litellm is None:
        yield None
        return
    python = litellm.parent / "python"
    version = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (workdir / "litellm.yaml").write_text(litellm_config(upstream))
    port = free_port()
    lite_env = {
        **env,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
    }
    lite_env.pop("DATABASE_URL", None)
    command = [str(litellm), "--config", str(workdir / "litellm.yaml"), "--port", str(port)]
    command += ["--num_workers", "1"]
    with process(command, lite_env, workdir / "litellm.log") as child:
        try:
            wait_until_up(f"http://127.0.0.1:{port}/health/liveliness", child, 180, "LiteLLM")
        except RuntimeError:
            print((workdir / "litellm.log").read_text()[-3000:], file=sys.stderr)
            raise
        yield child, port, version


if __name__ == "__main__":
    main()
