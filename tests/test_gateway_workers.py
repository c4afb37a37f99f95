"""``guardrail serve --workers 2`` on real Redis: two worker processes hold one cap."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from guardrail import RedisStore, count_messages, estimate_cost
from guardrail.testing import FakeOpenAIServer
from tests._gateway import TENANT_KEY, serve_process
from tests._sdk_http import http_library
from tests.conftest import REDIS_HOST, REDIS_PORT

pytestmark = pytest.mark.redis
HTTP = http_library(openai)


def test_two_workers_share_one_cap_with_no_overspend(tmp_path: Path) -> None:
    prefix = f"gw-{uuid.uuid4().hex[:10]}"
    messages = [{"role": "user", "content": "hi " * 1000}]
    prompt, output = count_messages(messages, "gpt-4o"), 200  # billed as counted
    cost = estimate_cost("gpt-4o", prompt, output)
    cap = cost * 13 + cost / 2  # room for 13 calls
    with FakeOpenAIServer(reply="word " * (output - 1)) as server:
        config = tmp_path / "guardrail.toml"
        config.write_text(
            f'store = "redis://{REDIS_HOST}:{REDIS_PORT}/0"\nprefix = "{prefix}"\n'
            f'[upstream.openai]\nbase_url = "{server.base_url}"\napi_key_env = "GR_TEST_KEY"\n'
            f'[policy]\ndaily_spend_usd = "{cap}"\ndefault_output_tokens = {output}\n'
            "loop_limit = 1000\n"
            f'[[keys]]\nkey = "{TENANT_KEY}"\ntenant = "team-a"\n'
        )
        env = {"GR_TEST_KEY": "sk-upstream"}
        with serve_process(str(config), workers=2, env=env) as (base, _):
            # A transient 503 (Redis slow to accept 50 connections at once) is retried by the
            # SDK; a budget refusal (429, x-should-retry: false) never is.
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=TENANT_KEY, max_retries=2)

            def call(_: int) -> bool:
                try:
                    client.chat.completions.create(model="gpt-4o", messages=messages)
                except openai.RateLimitError:
                    return False
                return True

            with ThreadPoolExecutor(50) as pool:
                results = list(pool.map(call, range(50)))
        served = sum(results)
        assert served == len(server.chat_requests)  # refused calls never reached upstream
        store = RedisStore.from_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix=prefix)
        spent = store.usage("team-a").spent_usd
        assert spent <= cap and spent == cost * served
        assert served == 13  # the cap was reached, and not over-run: 0 overspend
        assert store.usage("team-a").reserved_usd == Decimal(0)
        keys = list(store.client.scan_iter(match=f"{prefix}:*"))
        if keys:
            store.client.delete(*keys)
