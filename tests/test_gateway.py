"""The gateway: the real openai and anthropic SDKs, and a plain HTTP client, against
``guardrail serve``'s app on a loopback port, in front of the fake providers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from guardrail.errors import ConfigurationError
from guardrail.server.config import load_config, parse_config
from guardrail.server.serve import check_workers
from guardrail.testing import FakeAnthropicServer, FakeOpenAIServer
from tests._gateway import (
    ADMIN_KEY,
    OTHER_KEY,
    TENANT_KEY,
    UPSTREAM_KEY,
    config_for,
    held_upstream,
    raw_stream_request,
    running,
)
from tests._sdk_http import http_library

HELLO = [{"role": "user", "content": "Say hello"}]
httpx = http_library(openai)  # the plain HTTP client: httpx2 with openai 3, httpx before


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GR_TEST_OPENAI_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("GR_TEST_ADMIN_KEY", ADMIN_KEY)


@pytest.fixture
def gateway(server: FakeOpenAIServer, fake: FakeAnthropicServer) -> Iterator[tuple[str, Any]]:
    with running(config_for(server.base_url, fake.base_url)) as found:
        yield found


def oa(base: str, key: str = TENANT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def an(base: str, key: str = TENANT_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)


# -- calls ----------------------------------------------------------------------------------


def test_chat_completions_are_metered_and_relayed(gateway, server) -> None:
    base, app = gateway
    completion = oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert completion.choices[0].message.content == server.reply
    usage = app.state.guard.usage("team-a")
    assert usage.requests == 1 and usage.input_tokens == completion.usage.prompt_tokens
    assert app.state.guard.usage("org-1").requests == 1  # the key's parent is charged too
    assert usage.reserved_usd == 0


def test_the_tenant_key_is_never_seen_upstream(gateway, server, fake) -> None:
    base, _ = gateway
    oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
    oa(base).responses.create(model="gpt-4o", input="hi")
    an(base).messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    seen = [json.dumps(r.headers) for r in server.requests + fake.requests]
    assert seen and not any(TENANT_KEY in h for h in seen)
    assert all(r.headers["authorization"] == f"Bearer {UPSTREAM_KEY}" for r in server.requests)
    assert all(r.headers["x-api-key"] == UPSTREAM_KEY for r in fake.requests)


def test_the_tenant_comes_from_the_key_not_the_body(gateway) -> None:
    base, app = gateway
    oa(base).chat.completions.create(model="gpt-4o", messages=HELLO, user="team-b")
    assert app.state.guard.usage("team-a").requests == 1
    assert app.state.guard.usage("team-b").requests == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}),
        ("/v1/responses", {"model": "gpt-4o", "input": "hi"}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    ],
)
def test_fields_the_gateway_does_not_know_are_relayed(gateway, server, path, body) -> None:
    # A newer API field than the installed SDK knows is the caller's business: the
    # gateway forwards JSON, it is not the SDK (whose signature the library checks).
    base, app = gateway
    sent = {**body, "brand_new_field": {"x": [1, 2]}}
    headers = {"authorization": f"Bearer {TENANT_KEY}", "x-api-key": TENANT_KEY}
    answer = httpx.post(f"{base}{path}", json=sent, headers=headers)
    assert answer.status_code == 200, answer.text
    assert server.requests[-1].json["brand_new_field"] == {"x": [1, 2]}
    assert app.state.guard.usage("team-a").requests == 1


def test_a_messages_field_guardrail_does_not_know_is_refused_under_a_money_limit(
    gateway, fake
) -> None:
    """Unlike OpenAI's, a Messages field guardrail does not meter may bill what the request
    does not show (the beta fields: a server-held thread, fallbacks): under the gateway's
    money limit it is a 403 naming it, and the fields it knows are relayed."""
    base, app = gateway
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": HELLO}
    headers = {"x-api-key": TENANT_KEY}
    answer = httpx.post(f"{base}/v1/messages", json={**body, "brand_new_field": 1}, headers=headers)
    assert answer.status_code == 403 and "'brand_new_field'" in answer.text
    assert fake.requests == []
    answer = httpx.post(f"{base}/v1/messages", json={**body, "top_k": 5}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert fake.message_requests[-1].json["top_k"] == 5
    assert app.state.guard.usage("team-a").requests == 1


def test_a_budget_refusal_is_a_429_the_sdk_does_not_retry(gateway, server) -> None:
    base, _ = gateway
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=OTHER_KEY, max_retries=3)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    response = info.value.response
    assert response.headers["x-should-retry"] == "false"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()["error"]
    assert body["type"] == "budget_exceeded" and body["code"] == "daily_spend_usd"
    assert "team-b" in body["message"] and "resets at" in body["message"]
    assert server.requests == []  # nothing sent upstream, and no SDK retries reached us


def test_anthropic_refusals_have_anthropics_shape(gateway, fake) -> None:
    base, _ = gateway
    with pytest.raises(anthropic.RateLimitError) as info:
        an(base, OTHER_KEY).messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "budget_exceeded"
    assert fake.message_requests == []


def test_an_option_guardrail_cannot_price_is_a_403_naming_it(gateway, server, fake) -> None:
    base, _ = gateway  # the gateway's policy has a money limit
    with pytest.raises(openai.PermissionDeniedError) as info:
        oa(base).chat.completions.create(  # gpt-5-nano has no Priority prices
            model="gpt-5-nano", messages=HELLO, service_tier="priority"
        )
    body = info.value.response.json()["error"]
    assert body["type"] == "permission_error" and body["code"] == "unpriced_option"
    assert "service_tier='priority'" in body["message"]
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        an(base).messages.create(
            model="claude-opus-4-6", max_tokens=20, messages=HELLO, inference_geo="eu"
        )  # a geo guardrail knows no price for ("us" is priced, at 1.1x)
    shape = refused.value.response.json()
    assert shape["type"] == "error" and shape["error"]["type"] == "permission_error"
    assert "inference_geo='eu'" in shape["error"]["message"]
    assert server.requests == [] and fake.message_requests == []


def test_a_body_field_guardrail_does_not_meter_is_a_403_naming_it(gateway, fake) -> None:
    """A server-held thread (a beta field) in the JSON body: refused under the gateway's
    money limit, as through the guarded client."""
    base, _ = gateway
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        an(base).messages.create(
            model="claude-opus-4-6",
            max_tokens=20,
            messages=HELLO,
            extra_body={"thread": {"type": "continue", "previous_message_id": "msg_1"}},
        )
    assert "'thread'" in refused.value.response.json()["error"]["message"]
    assert fake.requests == []


def test_under_a_token_limit_input_nothing_counts_is_a_403_unbounded_input(server, fake) -> None:
    config = config_for(
        server.base_url, fake.base_url, policy={"tokens_per_day": 100_000, "loop_limit": None}
    )
    with running(config) as (base, _), pytest.raises(anthropic.PermissionDeniedError) as refused:
        an(base).messages.create(
            model="claude-opus-4-6",
            max_tokens=20,
            messages=HELLO,
            extra_body={"thread": {"type": "continue", "previous_message_id": "msg_1"}},
        )
    error = refused.value.response.json()["error"]
    assert error["type"] == "permission_error" and "token limit" in error["message"]
    assert fake.requests == []


def test_a_prompt_over_the_window_is_a_context_length_error(gateway, server) -> None:
    base, _ = gateway
    huge = [{"role": "user", "content": "word " * 140_000}]
    with pytest.raises(openai.BadRequestError) as info:
        oa(base).chat.completions.create(model="gpt-4o", messages=huge)
    assert info.value.code == "context_length_exceeded" and server.requests == []


def test_unknown_and_missing_keys_are_401(gateway, server) -> None:
    base, _ = gateway
    with pytest.raises(openai.AuthenticationError):
        oa(base, "sk-nobody").chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(anthropic.AuthenticationError):
        an(base, "sk-nobody").messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=HELLO
        )
    assert httpx.post(f"{base}/v1/chat/completions", json={}).status_code == 401
    assert server.requests == []


def test_upstream_errors_are_relayed_as_they_came(gateway, server) -> None:
    base, app = gateway
    server.enqueue_error(400, message="bad thing", code="invalid_value")
    with pytest.raises(openai.BadRequestError) as info:
        oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "invalid_value" and "bad thing" in str(info.value)
    assert app.state.guard.usage("team-a").reserved_usd == 0


def test_other_paths_are_refused_unless_let_through(gateway, server) -> None:
    base, _ = gateway
    response = httpx.get(f"{base}/v1/files", headers={"authorization": f"Bearer {TENANT_KEY}"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"
    with running(config_for(server.base_url, passthrough=["/v1/models/gpt-4o"])) as (b, _):
        through = httpx.get(
            f"{b}/v1/models/gpt-4o", headers={"authorization": f"Bearer {TENANT_KEY}"}
        )
        assert through.status_code == 200 and through.json()["id"] == "gpt-4o"


def test_models_lists_what_the_key_may_use(server, fake) -> None:
    keys = [{"key": TENANT_KEY, "tenant": "team-a", "models": ["gpt-4o", "gpt-4o-mini"]}]
    with running(config_for(server.base_url, keys=keys)) as (base, _):
        assert [m.id for m in oa(base).models.list()] == ["gpt-4o", "gpt-4o-mini"]
        with pytest.raises(openai.PermissionDeniedError):
            oa(base).chat.completions.create(model="gpt-4.1", messages=HELLO)
        assert oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)


# -- streams --------------------------------------------------------------------------------


def test_chat_streams_are_relayed_and_settled(gateway, server) -> None:
    base, app = gateway
    chunks = list(oa(base).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == server.reply
    assert all(c.choices for c in chunks)  # the usage chunk guardrail asked for is not relayed
    usage = app.state.guard.usage("team-a")
    assert usage.requests == 1 and usage.output_tokens > 0 and usage.reserved_usd == 0


def test_responses_streams_are_relayed_and_settled(gateway) -> None:
    base, app = gateway
    with oa(base).responses.stream(model="gpt-4o", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text
    assert app.state.guard.usage("team-a").output_tokens == final.usage.output_tokens


def test_anthropic_streams_are_relayed_and_settled(gateway, fake) -> None:
    base, app = gateway
    with an(base).messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HELLO) as s:
        message = s.get_final_message()
    assert message.content[0].text == fake.reply
    assert app.state.guard.usage("team-a").output_tokens == message.usage.output_tokens
    assert len(fake.count_requests) == 1  # the exact count, through the gateway's upstream


def test_a_caller_that_goes_away_mid_stream_is_settled_and_the_upstream_closed() -> None:
    settled = threading.Event()
    records: list[Any] = []

    def sink(record: Any) -> None:
        records.append(record)
        settled.set()

    with (
        held_upstream() as (upstream_url, held),
        running(config_for(upstream_url), sinks=[sink]) as (base, app),
    ):
        request = {"model": "gpt-4o", "messages": HELLO, "stream": True}
        with raw_stream_request(base, TENANT_KEY, request) as sock:
            received = b""
            while b"Hello there" not in received:  # the stream started: then hang up
                received += sock.recv(4096)
        assert settled.wait(timeout=10), "the call was not settled after the disconnect"
        assert held.closed.wait(timeout=10), "the upstream stream was not closed"
        (record,) = records
        assert record.outcome == "stream_closed" and record.usage_source == "local_count"
        assert record.output_tokens >= 2
        usage = app.state.guard.usage("team-a")
        assert usage.requests == 1 and usage.reserved_usd == 0


# -- the admin API --------------------------------------------------------------------------


def admin(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"})


def test_key_lifecycle(gateway) -> None:
    base, app = gateway
    with admin(base) as client:
        made = client.post("/admin/keys", json={"tenant": "team-c", "parents": ["org-1"]})
        assert made.status_code == 201
        key, key_id = made.json()["key"], made.json()["id"]
        assert oa(base, key).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert app.state.guard.usage("team-c").requests == 1
        listed = client.get("/admin/keys").json()["data"]
        assert any(k["id"] == key_id and k["tenant"] == "team-c" for k in listed)
        assert all(key not in json.dumps(k) for k in listed)  # stored hashed
        assert client.delete(f"/admin/keys/{key_id}").status_code == 204
        with pytest.raises(openai.AuthenticationError):
            oa(base, key).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert client.delete(f"/admin/keys/{key_id}").status_code == 404


def test_policies_and_usage_through_the_admin_api(gateway) -> None:
    base, app = gateway
    with admin(base) as client:
        set_ = client.put("/admin/tenants/team-a/policy", json={"daily_spend_usd": "0.000001"})
        assert set_.status_code == 200 and set_.json()["policy"]["daily_spend_usd"] == "0.000001"
        with pytest.raises(openai.RateLimitError):
            oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
        client.put("/admin/tenants/team-a/policy", json={"daily_spend_usd": 10})
        oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
        got = client.get("/admin/tenants/team-a/policy").json()
        assert got["source"] == "admin" and Decimal(got["policy"]["daily_spend_usd"]) == 10
        rows = client.get("/admin/usage", params={"tenant": "team-a"}).json()["data"]
        assert [r["requests"] for r in rows] == [1] and rows[0]["model"] == "gpt-4o"
        bad = client.put("/admin/tenants/team-a/policy", json={"daily_spend_usd": -1})
        assert bad.status_code == 400 and "daily_spend_usd" in bad.text
        assert client.put("/admin/tenants/team-a/policy", json={"nope": 1}).status_code == 400
    assert httpx.get(f"{base}/admin/keys").status_code == 401
    assert (
        httpx.get(
            f"{base}/admin/keys", headers={"authorization": f"Bearer {TENANT_KEY}"}
        ).status_code
        == 401
    )


def test_remaining_budget_headers(gateway) -> None:
    base, _ = gateway
    raw = oa(base).chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    left = Decimal(raw.headers["x-guardrail-remaining-usd-day"])
    assert Decimal(0) < left < Decimal(5) and int(raw.headers["x-guardrail-reset-day"]) > 0


def test_remaining_headers_are_the_least_left_under_any_scope_of_the_call(server) -> None:
    """team-a ($5 a day, no monthly cap) charges org-1 ($0.001 a day) and the global
    policy ($2 a month): the headers say what the tightest of them leaves, as the next
    reservation will find it, not only the tenant's own cap."""
    config = config_for(
        server.base_url,
        tenants={"org-1": {"daily_spend_usd": "0.001"}},
        global_policy={"monthly_spend_usd": 2},
    )
    with running(config) as (base, app):
        raw = oa(base).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=20
        )
        guard = app.state.guard
        org, everyone = guard.usage("org-1"), guard.store.usage("_global")
    assert org.spent_usd > 0 and org.reserved_usd == 0
    assert Decimal(raw.headers["x-guardrail-remaining-usd-day"]) == Decimal("0.001") - org.spent_usd
    month = Decimal(raw.headers["x-guardrail-remaining-usd-month"])
    assert month == Decimal(2) - everyone.month_spent_usd
    assert int(raw.headers["x-guardrail-reset-month"]) >= int(raw.headers["x-guardrail-reset-day"])


def test_health(gateway) -> None:
    base, _ = gateway
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}


def test_metrics_for_prometheus(gateway, server) -> None:
    base, _ = gateway
    with pytest.raises(openai.RateLimitError):
        oa(base, OTHER_KEY).chat.completions.create(model="gpt-4o", messages=HELLO)
    oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
    text = httpx.get(f"{base}/metrics").text
    for name in (
        "gen_ai_client_token_usage",
        "gen_ai_client_operation_duration",
        "guardrail_refusals",
    ):
        assert name in text, name
    refusals = [
        line
        for line in text.splitlines()
        if line.startswith("guardrail_refusals") and "daily_spend_usd" in line
    ]
    assert refusals and float(refusals[0].rsplit(" ", 1)[1]) == 1.0


def test_alerts_from_the_config(server, caplog) -> None:
    alerts = {"rules": {"refusal": {}}, "destinations": [{"type": "log"}]}
    with (
        caplog.at_level("WARNING", logger="guardrail.alerts"),
        running(config_for(server.base_url, alerts=alerts)) as (base, _),
        pytest.raises(openai.RateLimitError),
    ):
        oa(base, OTHER_KEY).chat.completions.create(model="gpt-4o", messages=HELLO)
    # Leaving the gateway delivered what was queued.
    logged = [r.getMessage() for r in caplog.records if r.name == "guardrail.alerts"]
    assert len(logged) == 1 and "team-b" in logged[0] and "daily_spend_usd" in logged[0]
    with pytest.raises(ConfigurationError, match="alerts"):
        config_for(server.base_url, alerts={"rules": {"nope": {}}})


# -- the token service ----------------------------------------------------------------------


def test_the_token_service(gateway) -> None:
    base, _ = gateway
    auth = {"authorization": f"Bearer {TENANT_KEY}"}
    from guardrail import count_messages, count_text, estimate_cost

    counted = httpx.post(
        f"{base}/tokens/count", json={"model": "gpt-4o", "text": "hello world"}, headers=auth
    )
    assert counted.json() == {
        "token_count": count_text("hello world", "gpt-4o"),
        "model": "gpt-4o",
        "exact": True,
    }
    messages = httpx.post(
        f"{base}/tokens/count", json={"model": "gpt-4o", "messages": HELLO}, headers=auth
    )
    assert messages.json()["token_count"] == count_messages(HELLO, "gpt-4o")
    cut = httpx.post(
        f"{base}/tokens/truncate",
        json={"model": "gpt-4o", "text": "word " * 100, "max_tokens": 10},
        headers=auth,
    ).json()
    assert cut["token_count"] <= 10 and cut["truncated"]
    built = httpx.post(
        f"{base}/prompt/build",
        json={
            "model": "gpt-4o",
            "reserve_output": 100,
            "context_window": 300,
            "system": "Be terse.",
            "user": "hi " * 500,
        },
        headers=auth,
    ).json()
    assert built["prompt_tokens"] <= 200 and built["messages"][0]["role"] == "system"
    cost = httpx.post(
        f"{base}/cost/estimate",
        json={"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500},
        headers=auth,
    ).json()
    assert Decimal(cost["cost_usd"]) == estimate_cost("gpt-4o", 1000, 500)
    bad = httpx.post(f"{base}/tokens/count", json={"model": "gpt-4o", "text": 5}, headers=auth)
    assert bad.status_code == 400 and "text" in bad.json()["error"]["message"]
    assert httpx.post(f"{base}/tokens/count", json={"text": "x"}).status_code == 401


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"store": "mysql://x"}, "store"),
        ({"upstream": {}}, "upstream"),
        ({"upstream": {"openai": {"base_url": "ftp://x"}}}, "upstream.openai.base_url"),
        ({"upstream": {"azure": {}}}, "upstream.azure"),
        ({"policy": {"daily_spend_usd": -1}}, "policy"),
        ({"policy": {"daily_spend": 5}}, "policy.daily_spend"),
        ({"keys": [{"tenant": "a"}]}, "keys[0]"),
        ({"keys": [{"key": "k", "tenant": "a b"}]}, "keys[0].tenant"),
        ({"keys": [{"key": "k"}]}, "keys[0].tenant"),
        ({"keys": [{"key_sha256": "zz", "tenant": "a"}]}, "keys[0].key_sha256"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_config_errors_name_the_key(change: dict[str, Any], named: str) -> None:
    data: dict[str, Any] = {"upstream": {"openai": {}}, **change}
    with pytest.raises(ConfigurationError) as info:
        parse_config(data)
    assert str(info.value).startswith(named), str(info.value)


def test_a_config_file(tmp_path) -> None:
    path = tmp_path / "guardrail.toml"
    path.write_text(
        'store = "memory://"\n[upstream.openai]\nbase_url = "https://api.openai.com/v1"\n'
        'api_key_env = "OPENAI_API_KEY"\n[policy]\ndaily_spend_usd = 5\n'
        '[[keys]]\nkey = "sk-team-a-x"\ntenant = "team-a"\nparents = ["org-1"]\n'
        "[keys.policy]\ndaily_spend_usd = 20\n"
    )
    config = load_config(path)
    assert config.policy.daily_spend_usd == 5 and config.keys[0].policy.daily_spend_usd == 20
    path.write_text("store = ")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_memory_store_with_workers_is_refused() -> None:
    config = parse_config({"upstream": {"openai": {}}})
    with pytest.raises(ConfigurationError, match="redis"):
        check_workers(config, 2)
    check_workers(config, 1)


def test_a_policy_store_that_fails_is_a_503_not_a_500(server) -> None:
    """The tenant's stored policy cannot be read: whose cap applies is unknown, so the call
    is refused with a clear 503 (fail closed); once known, a blip keeps the known policy."""
    from guardrail import MemoryStore

    class Flaky(MemoryStore):
        failing = True

        async def aget_record(self, kind: str, name: str) -> str | None:
            if self.failing and kind == "policies":
                raise ConnectionError("Timeout connecting to server")
            return await super().aget_record(kind, name)

    store = Flaky()
    with running(config_for(server.base_url), store=store) as (base, app):
        with pytest.raises(openai.APIStatusError) as info:
            oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert info.value.status_code == 503
        assert info.value.response.json()["error"]["code"] == "store_unavailable"
        assert server.requests == []
        store.failing = False
        oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
        store.failing = True  # the policy is known now: a blip does not refuse anybody
        cache = app.state.tenants._policies
        for scope, (_, policy) in list(cache.items()):
            cache[scope] = (0.0, policy)  # expired: the next call must try the store
        oa(base).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert len(server.chat_requests) == 2


# -- long events ----------------------------------------------------------------------------

# ~576 KB (~120k tokens) of instructions, which the Responses API echoes in its events:
# longer than aiohttp's 512 KiB line limit, far inside gpt-4.1's window and the body limit.
BIG_INSTRUCTIONS = "Follow the house style. " * 24_000


def test_the_gateway_relays_an_event_longer_than_512_kib(gateway, server) -> None:
    """It broke the relay with an ASGI error and a truncated stream (found by a review);
    the same call straight to the fake streams fine."""
    base, app = gateway
    direct = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    for client in (direct, oa(base)):
        request = dict(model="gpt-4.1", input="hi", instructions=BIG_INSTRUCTIONS, stream=True)
        kinds = [event.type for event in client.responses.create(**request)]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    usage = app.state.guard.usage("team-a")
    assert usage.reserved_usd == 0 and usage.output_tokens > 0
