"""``guardrail serve`` told to stop (SIGTERM) with a stream in flight: the stream is
finished for its caller and settled before the process exits (real Redis, so the
settlement can be read after the process is gone)."""

from __future__ import annotations

import signal
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from guardrail import RedisStore
from tests._gateway import TENANT_KEY, held_upstream, raw_stream_request, serve_process
from tests.conftest import REDIS_HOST, REDIS_PORT

pytestmark = pytest.mark.redis


def test_a_stream_in_flight_at_shutdown_is_finished_and_settled(tmp_path: Path) -> None:
    prefix = f"gw-stop-{uuid.uuid4().hex[:10]}"
    store = RedisStore.from_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix=prefix)
    with held_upstream() as (upstream_url, held):
        config = tmp_path / "guardrail.toml"
        config.write_text(
            f'store = "redis://{REDIS_HOST}:{REDIS_PORT}/0"\nprefix = "{prefix}"\n'
            f'[upstream.openai]\nbase_url = "{upstream_url}"\napi_key_env = "GR_TEST_KEY"\n'
            "[policy]\ndaily_spend_usd = 5\n"
            f'[[keys]]\nkey = "{TENANT_KEY}"\ntenant = "team-a"\n'
        )
        with serve_process(str(config), env={"GR_TEST_KEY": "sk-upstream"}) as (base, process):
            request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
            with raw_stream_request(base, TENANT_KEY, {**request, "stream": True}) as sock:
                received = b""
                while b"Hello there" not in received:  # the stream is running
                    received += sock.recv(4096)
                assert store.usage("team-a").reserved_usd > 0  # reserved, not yet settled
                process.send_signal(signal.SIGTERM)  # what a deployment's stop sends
                held.release.set()  # the upstream finishes its stream
                while chunk := sock.recv(4096):
                    received += chunk
                    if b"data: [DONE]" in received and received.endswith(b"0\r\n\r\n"):
                        break  # the chunked body's last chunk: the stream ended whole
            # uvicorn re-raises the signal once it has shut down (0 before 0.29)
            status = process.wait(timeout=40)
            assert status in (0, -signal.SIGTERM), process.stderr.read() if process.stderr else ""
    assert b'"finish_reason": "stop"' in received.replace(b'":"', b'": "')
    assert b"data: [DONE]" in received
    usage = store.usage("team-a")
    assert usage.requests == 1 and usage.reserved_usd == Decimal(0)
    assert usage.input_tokens == 1 and usage.output_tokens == 4  # the upstream's usage chunk
    keys = list(store.client.scan_iter(match=f"{prefix}:*"))
    if keys:
        store.client.delete(*keys)
