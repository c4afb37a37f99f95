"""The guard's per-call work in machine instructions (valgrind), C work included.

``bench_work.py`` counts Python bytecodes, which see a call into C (``Decimal``, dict
operations, ``object.__setattr__``) as one step. This counts the instructions the CPU
runs: two processes under ``valgrind --tool=callgrind`` run the same warm-up (bare and
guarded calls over an in-process ``MockTransport``, as in ``bench_work.py``), then
``--calls`` calls of one kind each, bare SDK or guarded; the difference of their totals
divided by ``--calls`` is what the guard adds per call. Deterministic to about 0.1%.

Needs valgrind (``apt-get install valgrind``); about a minute for 100 calls.

Run:  TIKTOKEN_CACHE_DIR=/work/shared/tiktoken-cache python bench/bench_instructions.py
      [--calls 100] [--endpoint chat|responses|embeddings]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TIKTOKEN_CACHE_DIR", "/work/shared/tiktoken-cache")
sys.path.insert(0, os.path.dirname(__file__))


async def _calls(endpoint: str, kind: str, calls: int) -> None:
    """The measured process: the same warm-up whatever ``kind``, then ``calls`` calls."""
    from bench_work import call_for, mock_clients

    logging.disable(logging.WARNING)
    http, bare, _, guarded = mock_clients(endpoint, {"x-request-id": "req_1"})
    bare_call, guarded_call = call_for(endpoint, bare), call_for(endpoint, guarded)
    for _ in range(50):
        await bare_call()
        await guarded_call()
    call = bare_call if kind == "bare" else guarded_call
    for _ in range(calls):
        await call()
    await http.aclose()


def _instructions(endpoint: str, kind: str, calls: int, out: str) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=no",
        "--branch-sim=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        kind,
        "--endpoint",
        endpoint,
        "--calls",
        str(calls),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"valgrind reported no total:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--endpoint", choices=("chat", "responses", "embeddings"), default="chat")
    parser.add_argument("--child", choices=("bare", "guarded"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_calls(args.endpoint, args.child, args.calls))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        runs = {
            kind: pool.submit(
                _instructions, args.endpoint, kind, args.calls, os.path.join(tmp, kind)
            )
            for kind in ("bare", "guarded")
        }
        bare, guarded = (runs[k].result() for k in ("bare", "guarded"))
    print(
        f"{args.endpoint}: the guard adds {(guarded - bare) / args.calls:,.0f} instructions "
        f"per call ({args.calls} calls of each kind after the same warm-up)"
    )


if __name__ == "__main__":
    main()
