"""A gateway with a ledger, an admin key and alerts, and a few calls through it: what the
dashboard tests (in-process and in a real browser) look at."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests._gateway import ADMIN_KEY, OTHER_KEY, TENANT_KEY, config_for, running

HELLO = [{"role": "user", "content": "Hello there"}]
BASIC = "Basic " + base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()


@contextmanager
def dashboard_gateway(server: Any, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(base URL, app) of a gateway whose records go to a SQLite ledger, after three
    calls by team-a (under org-1) and one refused call by team-b, all flushed."""
    config = config_for(
        server.base_url,
        ledger={"url": f"sqlite:///{tmp_path / 'ledger.db'}", "spool": str(tmp_path / "s.jsonl")},
        alerts={"rules": {"refusal": {}}, "destinations": []},
    )
    with running(config) as (base, app):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=TENANT_KEY, max_retries=0)
        for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o"):
            client.chat.completions.create(model=model, messages=HELLO, max_tokens=20)
        refused = openai.OpenAI(base_url=f"{base}/v1", api_key=OTHER_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            refused.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert app.state.guard.alerts.flush()  # the refusal's alert reached the ledger sink
        assert app.state.ledger.flush()  # and everything is in the database
        yield base, app
