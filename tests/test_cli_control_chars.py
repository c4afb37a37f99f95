"""``guardrail usage`` tables write a cell's control characters out (``\\n``, ``\\x1b``): a
model name a caller chose (an unknown one is accepted under a token limit and recorded as
is) must not forge a row of the report or send the terminal an escape sequence (found by
a review)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from guardrail import Guard, MemoryStore, Policy
from guardrail.cli import main
from guardrail.ledger import LedgerSink

EVIL = "x-model\nFORGED-ROW  $0  0  0  0\x1b]8;;https://evil.example\x1b\\"


def test_a_model_name_cannot_add_lines_or_escapes_to_a_report(
    server, clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    sink = LedgerSink(url, spool_path=tmp_path / "s.jsonl", flush_seconds=0.01)
    store = MemoryStore(clock=clock)
    guard = Guard(
        Policy(tokens_per_day=100_000, loop_limit=None), store=store, clock=store.now, sinks=[sink]
    )
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    with pytest.warns(UserWarning):  # "guardrail does not know model ..."
        client.for_tenant("u-1").chat.completions.create(
            model=EVIL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert sink.flush()
    sink.close()
    capsys.readouterr()
    day = "2026-11-23"
    assert main(["usage", "--ledger", url, "--by", "model", "--since", day, "--until", day]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out, repr(out)
    assert not any(line.startswith("FORGED-ROW") for line in out.splitlines()), out
