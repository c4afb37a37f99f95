"""Running the gateway in tests: a real uvicorn server on a loopback port, in a thread,
in front of the fake providers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from guardrail.server.app import create_app
from guardrail.server.config import GatewayConfig, parse_config
from guardrail.stores.base import Store

TENANT_KEY = "sk-team-a-secret"
OTHER_KEY = "sk-team-b-secret"
ADMIN_KEY = "sk-admin-secret"
UPSTREAM_KEY = "sk-upstream-secret"


def config_for(
    openai_url: str | None, anthropic_url: str | None = None, **extra: Any
) -> GatewayConfig:
    upstream: dict[str, Any] = {}
    if openai_url:
        upstream["openai"] = {"base_url": openai_url, "api_key_env": "GR_TEST_OPENAI_KEY"}
    if anthropic_url:
        upstream["anthropic"] = {"base_url": anthropic_url, "api_key_env": "GR_TEST_ANTHROPIC_KEY"}
    data: dict[str, Any] = {
        "store": "memory://",
        "admin_key_env": "GR_TEST_ADMIN_KEY",
        "upstream": upstream,
        "policy": {"daily_spend_usd": 5, "loop_limit": None},
        "keys": [
            {"key": TENANT_KEY, "tenant": "team-a", "parents": ["org-1"]},
            {"key": OTHER_KEY, "tenant": "team-b", "policy": {"daily_spend_usd": "0.000001"}},
        ],
    }
    data.update(extra)
    return parse_config(data)


@contextmanager
def running(
    config: GatewayConfig, store: Store | None = None, sinks: Any = ()
) -> Iterator[tuple[str, Any]]:
    """(the gateway's base URL, the app) while a uvicorn server serves it."""
    app = create_app(config, store=store, sinks=sinks)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)  # waiting for a real server to bind: not a race being hidden
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
