"""examples/agents.py runs offline (it needs openai-agents, so it is tested here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agents.py"


def test_the_agents_example_answers_spends_and_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "run 1: Weather in Oslo? -> It is 4°C and snowing." in out
    assert re.search(r"refused before sending: tenant 'user-42' would exceed daily_spend_usd", out)
    runs = re.findall(r"\(user-42: \$([0-9.]+) of \$0\.005\)", out)
    spent = [float(s) for s in runs]
    assert len(spent) >= 2 and spent == sorted(spent) and 0 < spent[-1] <= 0.005
    calls = re.search(r"(\d+) model calls.*received (\d+) requests", out)
    assert calls is not None and calls.group(1) == calls.group(2) == str(2 * len(spent))
    assert "user-7 still gets answers: It is 19°C and sunny." in out
    assert done.stderr == ""
