"""The gateway against callers and upstreams that do not play by the rules: paths that
would resolve to another endpoint upstream, bodies over the limit or nested past the
parser, admin lists given as strings, long token-service work, a JSON answer to a stream
request, and a config whose reservations expire before its calls time out."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

from guardrail import ConfigurationError, MemoryStore
from guardrail.server import app as app_module
from guardrail.server.config import parse_config
from guardrail.server.tenants import digest
from guardrail.server.token_service import SERVICES
from guardrail.server.upstream import Upstream
from tests._gateway import (
    ADMIN_KEY,
    TENANT_KEY,
    UPSTREAM_KEY,
    config_for,
    get,
    running,
)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GR_TEST_OPENAI_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ADMIN_KEY", ADMIN_KEY)


def raw(base: str, method: str, path: str, body: bytes, **headers: str) -> bytes:
    """One request on a plain socket, the path sent byte for byte (an HTTP client would
    resolve its dot segments first); the whole answer."""
    fields = {
        "host": "gateway",
        "authorization": f"Bearer {TENANT_KEY}",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "close",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    fields = {k: v for k, v in fields.items() if v}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    host, port = base[len("http://") :].split(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        while chunk := sock.recv(65536):
            out += chunk
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post(base: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    fields = {"authorization": f"Bearer {TENANT_KEY}", "content-type": "application/json"}
    request = urllib.request.Request(
        base + path, data=body, headers={**fields, **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- paths forwarded upstream ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/../chat/completions",
        "/v1/files/%2e%2e/chat/completions",
        "/v1/files/%2E./chat/completions",
        "/v1/files/..%2Fchat%2Fcompletions",
        "/v1/files/x%2f..%2f..%2fchat/completions",
        "/v1/files/..\\chat/completions",
        "/v1/files/./x",
    ],
)
def test_a_passthrough_path_that_would_resolve_elsewhere_is_refused(server, path) -> None:
    with running(config_for(server.base_url, passthrough=["/v1/files"])) as (base, app):
        answer = raw(base, "POST", path, json.dumps(CHAT).encode())
        assert status_of(answer) == 400, answer[:200]
        assert b"not forwarded" in answer and b"invalid_path" in answer
        assert server.requests == [] and app.state.guard.usage("team-a").requests == 0


def test_dot_segments_do_not_reach_anthropic_messages(fake) -> None:
    with running(config_for(None, fake.base_url, passthrough=["/v1/files"])) as (base, _):
        body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5, **CHAT}).encode()
        answer = raw(
            base, "POST", "/v1/files/../messages", body, authorization="", x_api_key=TENANT_KEY
        )
        assert status_of(answer) == 400 and b'"type": "error"' in answer, answer[:300]
        assert fake.requests == []


def test_a_plain_passthrough_path_is_still_forwarded(server) -> None:
    with running(config_for(server.base_url, passthrough=["/v1/models/gpt-4o"])) as (base, _):
        answer = raw(base, "GET", "/v1/models/gpt-4o", b"")
        assert status_of(answer) == 200 and b'"gpt-4o"' in answer, answer[:300]


def test_the_upstream_url_is_sent_as_built_not_resolved() -> None:
    spec = parse_config({"upstream": {"openai": {"base_url": "http://up:9/v1"}}})
    upstream = Upstream(spec.upstreams["openai"], session=None)  # type: ignore[arg-type]
    url = upstream.url("/v1/files/../chat/completions", "a=%2F")
    assert str(url) == "http://up:9/v1/files/../chat/completions?a=%2F"
    assert str(upstream.url("/v1/chat/completions")) == "http://up:9/v1/chat/completions"


# -- bodies ---------------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server) -> None:
    with running(config_for(server.base_url, max_body_bytes=1024)) as (base, _):
        # The body never comes: before the fix the gateway waited for all of it.
        answer = raw(base, "POST", "/v1/chat/completions", b"{", content_length=str(10**9))
        assert status_of(answer) == 413, answer[:200]
        assert server.requests == []


def test_an_undeclared_body_over_the_limit_is_refused(server) -> None:
    with running(config_for(server.base_url, max_body_bytes=1024)) as (base, _):
        chunk = b"x" * 4096
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
        answer = raw(
            base,
            "POST",
            "/v1/chat/completions",
            body,
            content_length="",
            transfer_encoding="chunked",
        )
        assert status_of(answer) == 413, answer[:200]


def test_forwarded_routes_keep_the_body_limit(server, fake) -> None:
    config = config_for(
        server.base_url, fake.base_url, max_body_bytes=1024, passthrough=["/v1/files"]
    )
    with running(config) as (base, _):
        big = json.dumps({"model": "claude-haiku-4-5", "text": "x" * 4096}).encode()
        counted = raw(
            base, "POST", "/v1/messages/count_tokens", big, authorization="", x_api_key=TENANT_KEY
        )
        assert status_of(counted) == 413, counted[:200]
        assert status_of(raw(base, "POST", "/v1/files", big)) == 413
        assert fake.requests == [] and server.requests == []


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/tokens/count"])
def test_a_body_nested_past_the_parser_is_a_400(server, path) -> None:
    with running(config_for(server.base_url)) as (base, _):
        status, body = post(base, path, b'{"model":"gpt-4o","messages":' + DEEP + b"}")
        assert status == 400 and b"nested too deeply" in body, (status, body[:200])
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        assert server.requests == []


def test_a_deep_body_is_a_400_in_anthropics_shape_and_on_the_admin_api(server, fake) -> None:
    with running(config_for(server.base_url, fake.base_url)) as (base, _):
        status, body = post(base, "/v1/messages", b'{"x":' + DEEP + b"}", {"x-api-key": TENANT_KEY})
        assert status == 400 and json.loads(body)["type"] == "error", body[:200]
        status, body = post(base, "/admin/keys", b'{"tenant":' + DEEP + b"}", ADMIN)
        assert status == 400 and b"nested too deeply" in body, (status, body[:200])
        status, body = post(base, "/admin/keys", b'["tenant"]', ADMIN)
        assert status == 400, (status, body)


SURROGATES = {
    "embeddings input": (
        "/v1/embeddings",
        b'{"model": "text-embedding-3-small", "input": "hello \\ud800"}',
        "input has a lone surrogate",
    ),
    "embeddings input list": (
        "/v1/embeddings",
        b'{"model": "text-embedding-3-small", "input": ["ok", [1, 2], "\\udfff"]}',
        "input[2] has a lone surrogate",
    ),
    "chat body key": (
        "/v1/chat/completions",
        b'{"model": "gpt-4o", "\\ud800": 1, "messages": [{"role": "user", "content": "hi"}]}',
        "a field name of the request has a lone surrogate",
    ),
    "nested key": (
        "/v1/chat/completions",
        b'{"model": "gpt-4o", "metadata": {"\\ud800": "x"}, '
        b'"messages": [{"role": "user", "content": "hi"}]}',
        "a key of metadata has a lone surrogate",
    ),
}


@pytest.mark.parametrize("case", list(SURROGATES))
def test_a_lone_surrogate_anywhere_is_a_400_naming_it(server, case) -> None:
    """JSON may carry ``"\\ud800"``, UTF-8 cannot: refused before the reservation, not a
    500 from the upstream post's encode."""
    path, body, says = SURROGATES[case]
    with running(config_for(server.base_url)) as (base, app):
        status, answer = post(base, path, body)
        assert status == 400, (case, status, answer[:200])
        assert says in json.loads(answer)["error"]["message"]
        assert app.state.guard.usage("team-a").reserved_usd == 0
    assert not server.requests


# -- the admin API --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("parents", "org1"), ("models", "gpt-4o"), ("parents", ["org1", 5]), ("models", [""])],
)
def test_admin_key_lists_must_be_lists_of_strings(server, field, value) -> None:
    with running(config_for(server.base_url)) as (base, app):
        data = json.dumps({"tenant": "team-x", field: value}).encode()
        status, body = post(base, "/admin/keys", data, ADMIN)
        assert status == 400, (status, body)
        assert json.loads(body)["error"]["message"].startswith(f"{field}: must be a list")
        status, _ = post(base, "/admin/keys", json.dumps({"tenant": "team-x"}).encode(), ADMIN)
        assert status == 201
        created = json.dumps({"tenant": "team-y", "parents": ["org1"], "models": ["gpt-4o"]})
        assert post(base, "/admin/keys", created.encode(), ADMIN)[0] == 201


@pytest.mark.parametrize(
    "body",
    [{"tenant": "t-x", "parents": ["t-x"]}, {"tenant": "t-z", "parents": ["org-9", "org-9"]}],
    ids=["parent-is-the-tenant", "repeated-parent"],
)
def test_a_key_whose_scopes_repeat_is_refused_when_it_is_made(server, body) -> None:
    """The rule every call with the key applies (TenantBinding.of), applied at creation:
    else the key is made (201) and every call with it fails."""
    with running(config_for(server.base_url)) as (base, app):
        status, answer = post(base, "/admin/keys", json.dumps(body).encode(), ADMIN)
        assert status == 400, (status, answer)
        assert json.loads(answer)["error"]["message"].startswith("parents: ")
        assert "repeat an id" in json.loads(answer)["error"]["message"]
        assert asyncio.run(app.state.guard.store.alist_records("keys")) == {}


@pytest.mark.parametrize("tenant", [None, 5, "", ["t"], {"id": "t"}])
def test_a_key_tenant_that_is_not_a_string_is_a_400(server, tenant) -> None:
    """Not ``str(tenant)``: a null tenant made a key charged to a tenant named "None"."""
    with running(config_for(server.base_url)) as (base, app):
        status, answer = post(base, "/admin/keys", json.dumps({"tenant": tenant}).encode(), ADMIN)
        assert status == 400, (status, answer)
        assert json.loads(answer)["error"]["message"].startswith("tenant: must be a non-empty")
        status, answer = post(base, "/admin/keys", b'{"tenant": "t-1", "label": 5}', ADMIN)
        assert status == 400 and b"label: must be a string" in answer, (status, answer)
        assert asyncio.run(app.state.guard.store.alist_records("keys")) == {}
        status, answer = post(base, "/admin/keys", b'{"tenant": "t-1", "label": null}', ADMIN)
        assert status == 201 and json.loads(answer)["tenant"] == "t-1"


def test_a_stored_key_no_call_can_bind_is_a_403_not_a_500(server) -> None:
    """A key stored before its scopes were checked (repeating its tenant) is refused
    clearly on each call, before anything is reserved or sent."""
    store = MemoryStore()
    record = {"tenant": "t-x", "parents": ["t-x"], "models": None, "label": ""}
    asyncio.run(store.aput_record("keys", digest("sk-old-key"), json.dumps(record)))
    with running(config_for(server.base_url), store=store) as (base, _):
        status, answer = post(
            base,
            "/v1/chat/completions",
            json.dumps(CHAT).encode(),
            {"authorization": "Bearer sk-old-key"},
        )
    assert status == 403, (status, answer)
    error = json.loads(answer)["error"]
    assert error["code"] == "invalid_key" and "repeat an id" in error["message"]
    assert not server.requests


def test_a_config_key_whose_scopes_repeat_is_a_configuration_error() -> None:
    key = {"key": "k", "tenant": "t-x", "parents": ["org", "org"]}
    with pytest.raises(ConfigurationError, match=r"keys\[0\]\.parents: scopes of 't-x' repeat"):
        parse_config({"upstream": {"openai": {"api_key_env": "X"}}, "keys": [key]})


@pytest.mark.parametrize("label", [5, None, ["a"], {"x": 1}])
def test_a_config_key_whose_label_is_not_a_string_is_a_configuration_error(label) -> None:
    key = {"key": "k", "tenant": "t-x", "label": label}
    with pytest.raises(ConfigurationError, match=r"keys\[0\]\.label: must be a string"):
        parse_config({"upstream": {"openai": {"api_key_env": "X"}}, "keys": [key]})
    good = parse_config(
        {"upstream": {"openai": {"api_key_env": "X"}}, "keys": [{**key, "label": "ops"}]}
    )
    assert good.keys[0].label == "ops"


# -- the token service ----------------------------------------------------------------------


def test_the_token_service_runs_off_the_event_loop(server, monkeypatch) -> None:
    """A count that takes a while must not stop the gateway answering: the count is held
    until /health has been answered, which cannot happen if it runs on the loop."""
    entered, release = threading.Event(), threading.Event()
    held_off: list[bool] = []

    def slow_count(body: Any) -> dict[str, Any]:
        entered.set()
        held_off.append(release.wait(timeout=10))
        return {"token_count": 1}

    monkeypatch.setitem(SERVICES, "/tokens/count", slow_count)
    with running(config_for(server.base_url)) as (base, _):
        answers: list[Any] = []
        caller = threading.Thread(
            target=lambda: answers.append(post(base, "/tokens/count", b'{"text": "x"}'))
        )
        caller.start()
        assert entered.wait(timeout=10)
        status, _, _ = get(f"{base}/health")  # blocks for the count's 10 s if on the loop
        release.set()
        caller.join(timeout=30)
        assert status == 200 and held_off == [True]
        assert answers[0][0] == 200


def test_the_token_service_has_a_size_limit(server, monkeypatch) -> None:
    monkeypatch.setattr(app_module, "MAX_SERVICE_BYTES", 2048)
    with running(config_for(server.base_url)) as (base, _):
        text = json.dumps({"model": "gpt-4o", "text": "word " * 1000}).encode()
        status, body = post(base, "/tokens/count", text)
        assert status == 413 and b"2048" in body, (status, body[:200])
        small = json.dumps({"model": "gpt-4o", "text": "word " * 10}).encode()
        assert post(base, "/tokens/count", small)[0] == 200


# -- a JSON answer to a stream request ------------------------------------------------------


@contextmanager
def json_upstream(usage: dict[str, int] | None) -> Iterator[tuple[str, list[str]]]:
    """An upstream that answers every chat request with a JSON completion, whatever its
    ``stream``: (its base URL, the paths it was sent)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append(self.path)
            reply: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello " * 400},
                        "finish_reason": "stop",
                    }
                ],
            }
            if usage is not None:
                reply["usage"] = usage
            payload = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{upstream.server_address[1]}/v1", seen
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_a_json_answer_to_a_stream_request_is_a_502_settled_from_its_usage() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 400, "total_tokens": 409}
    records: list[Any] = []
    with (
        json_upstream(usage) as (upstream, seen),
        running(config_for(upstream), sinks=[records.append]) as (base, app),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=TENANT_KEY, max_retries=2)
        with pytest.raises(openai.InternalServerError) as info:
            for _ in client.chat.completions.create(**CHAT, max_tokens=500, stream=True):
                pass
        assert info.value.status_code == 502
        assert info.value.code == "upstream_not_a_stream"
        assert info.value.response.headers["x-should-retry"] == "false"
        assert seen == ["/v1/chat/completions"]  # not retried: it was billed
        (record,) = records
        assert record.output_tokens == 400 and record.input_tokens == 9
        spent = app.state.guard.usage("team-a")
        assert spent.reserved_usd == 0 and spent.spent_usd > 0


def test_a_json_answer_to_a_stream_request_without_usage_is_charged_its_bound() -> None:
    # It was billed: charged as a 200 without usage is (the prompt and the whole reserved
    # output), never released as if nothing had been sent.
    records: list[Any] = []
    with (
        json_upstream(None) as (upstream, seen),
        running(config_for(upstream), sinks=[records.append]) as (base, app),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=TENANT_KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError):
            for _ in client.chat.completions.create(**CHAT, max_tokens=500, stream=True):
                pass
        (record,) = records
        assert record.output_tokens == 500 and record.usage_source == "local_count"
        spent = app.state.guard.usage("team-a")
        assert spent.reserved_usd == 0 and spent.spent_usd > 0


# -- reservations shorter than a call's wait -------------------------------------------------


def test_a_reservation_ttl_shorter_than_the_timeout_is_fine() -> None:
    # A call in flight keeps its hold (the gateway renews it): no TTL is too short for it.
    data: dict[str, Any] = {
        "upstream": {"openai": {"timeout_seconds": 600}},
        "policy": {"reservation_ttl_seconds": 300},
        "keys": [{"key": "k", "tenant": "a", "policy": {"reservation_ttl_seconds": 60}}],
    }
    config = parse_config(data)
    assert config.policy.reservation_ttl_seconds == 300
    assert config.upstreams["openai"].timeout_seconds == 600


def test_the_admin_api_takes_a_ttl_shorter_than_the_timeout(server) -> None:
    with running(config_for(server.base_url)) as (base, _):
        url = "/admin/tenants/team-a/policy"
        for ttl in (60, 3600):
            data = json.dumps({"reservation_ttl_seconds": ttl}).encode()
            request = urllib.request.Request(base + url, data=data, headers=ADMIN, method="PUT")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200, ttl
