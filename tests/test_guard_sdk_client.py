"""The guarded client is a real SDK client: what frameworks check of it holds, every paid
endpoint is guarded or refused, free ones are the SDK's own."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import openai
import pytest

import guardrail
from guardrail import Guard, Policy, UnmeteredCall
from guardrail.providers.openai import GuardedAsyncOpenAI, GuardedOpenAI
from guardrail.providers.openai.client import UNMETERED
from guardrail.providers.openai.embeddings import MAX_TOKENS_PER_INPUT
from guardrail.testing import FakeOpenAIServer

MODEL = "gpt-4o"
HELLO = [{"role": "user", "content": "Say hello"}]


def make(
    server: FakeOpenAIServer, policy: Policy | None = None, *, async_: bool = False, **kw: Any
) -> tuple[Guard, Any, list[guardrail.UsageRecord]]:
    records: list[guardrail.UsageRecord] = []
    guard = Guard(policy or Policy(loop_limit=None), sinks=[records.append], **kw)
    raw_cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    return guard, guard.wrap(raw_cls(base_url=server.base_url, api_key="t", max_retries=3)), records


def test_the_wrapper_is_an_sdk_client(server) -> None:
    guard, client, _ = make(server)
    _, aclient, _ = make(server, async_=True)
    assert isinstance(client, openai.OpenAI) and isinstance(client, GuardedOpenAI)
    assert isinstance(aclient, openai.AsyncOpenAI) and isinstance(aclient, GuardedAsyncOpenAI)
    for name in (
        "chat.completions.create",
        "chat.completions.parse",
        "responses.create",
        "responses.parse",
        "embeddings.create",
        "beta.chat.completions.create",
    ):
        resource, _, method = name.rpartition(".")
        target = aclient
        for part in resource.split("."):
            target = getattr(target, part)
        assert inspect.iscoroutinefunction(getattr(target, method)), name
    # What frameworks read is the SDK's: settings, the HTTP client, the retries asked for.
    assert client.base_url == client.unwrapped.base_url and client.api_key == "t"
    assert client.max_retries == 3 and client._client is client.unwrapped._client
    assert client._guard is guard


def test_copies_stay_guarded(server) -> None:
    guard, client, records = make(server, Policy(daily_spend_usd=5, loop_limit=None))
    for twin in (
        client.with_options(timeout=9.0),
        client.copy(max_retries=0),
        client.for_tenant("ann", parents=["org"]),
        copy.copy(client),
    ):
        assert isinstance(twin, GuardedOpenAI)
        twin.chat.completions.create(model=MODEL, messages=HELLO)
    assert client.with_options(timeout=9.0).timeout == 9.0
    assert [r.tenant for r in records] == ["default", "default", "ann", "default"]
    assert records[2].scopes == ("ann", "org")
    # Wrapping a guarded client again guards its original, once.
    again = Guard().wrap(client)
    assert again.unwrapped is client.unwrapped


def test_a_copy_made_after_calls_sends_with_its_own_options(server) -> None:
    # The SDK method a guarded method sends with is looked up once per client: a copy
    # (with other headers, here) must send with its own, not with the original's.
    guard, client, _ = make(server)
    client.chat.completions.create(model=MODEL, messages=HELLO)
    tagged = client.with_options(default_headers={"x-copy": "yes"})
    tagged.chat.completions.create(model=MODEL, messages=HELLO)
    client.chat.completions.create(model=MODEL, messages=HELLO)
    sent = [r.headers.get("x-copy") for r in server.chat_requests]
    assert sent == [None, "yes", None]


@pytest.mark.parametrize("async_", [False, True])
async def test_with_options_max_retries_leaves_the_guards_attempts(server, async_) -> None:
    """Frameworks call with_options(max_retries=N) (openai-agents, with max_retries=0, on
    every model call): the copy keeps its guard and tenant, reports the retries it was
    given, and a guarded call on it still makes only the guard's attempts."""

    async def no_wait(seconds: float) -> None:
        return None

    policy = Policy(daily_spend_usd=5, max_attempts=2, loop_limit=None)
    guard, client, records = make(
        server, policy, async_=async_, sleep=lambda s: None, async_sleep=no_wait
    )
    retried = client.for_tenant("ann").with_options(max_retries=6)
    assert retried.max_retries == 6 and retried._guard is guard
    for _ in range(3):
        server.enqueue_error(500)
    with pytest.raises(openai.InternalServerError):
        created = retried.chat.completions.create(model=MODEL, messages=HELLO)
        if async_:
            await created
    assert len(server.requests) == 2
    assert [(r.tenant, r.attempts) for r in records if r.settlement == "none"] == [("ann", 2)]
    assert guard.usage("ann").reserved_usd == 0


def test_an_azure_client_stays_an_azure_client(server) -> None:
    azure = openai.AzureOpenAI(
        azure_endpoint=server.url, api_key="t", api_version="2024-10-21", azure_deployment="dep"
    )
    guarded = Guard().wrap(azure)
    assert isinstance(guarded, openai.AzureOpenAI)
    assert type(guarded.with_options(timeout=5)).__mro__[1] is openai.AzureOpenAI


def test_guarded_calls_are_sent_once_however_often_the_sdk_would_retry(server) -> None:
    server.enqueue_error(400)
    guard, client, _ = make(server)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(server.chat_requests) == 1  # the client asked for 3 SDK retries


def test_keyword_arguments_only() -> None:
    client = Guard().wrap(openai.OpenAI(api_key="t"))
    with pytest.raises(TypeError, match="keyword"):
        client.chat.completions.create({"model": MODEL})


# -- beta.chat.completions ----------------------------------------------------------------


def test_beta_chat_completions_are_guarded(server) -> None:
    guard, client, records = make(server)
    client.beta.chat.completions.create(model=MODEL, messages=HELLO)
    with client.beta.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content
    assert [r.outcome for r in records] == ["ok", "stream_completed"]
    assert server.chat_requests[-1].json["stream_options"] == {"include_usage": True}
    guard2, tiny, _ = make(server, Policy(daily_spend_usd="0.000001"))
    before = len(server.chat_requests)
    with pytest.raises(guardrail.BudgetExceeded):
        tiny.beta.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(server.chat_requests) == before


# -- embeddings ---------------------------------------------------------------------------


def test_embeddings_are_counted_reserved_and_settled_at_their_price(server) -> None:
    guard, client, records = make(server, Policy(daily_spend_usd=1, loop_limit=None))
    out = client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
    assert len(out.data) == 2
    assert records[-1].input_tokens == out.usage.prompt_tokens == 4
    assert records[-1].output_tokens == 0
    assert records[-1].cost_usd == guardrail.estimate_cost("text-embedding-3-small", 4, 0)
    client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert records[-1].input_tokens == 4  # token arrays count by their length
    client.embeddings.create(model="text-embedding-3-small", input="one string")
    assert guard.usage("default").requests == 3 and guard.usage("default").reserved_usd == 0


def test_embedding_limits_refuse_before_sending(server) -> None:
    guard, client, _ = make(server)
    with pytest.raises(guardrail.ContextWindowExceeded, match=r"input\[1\]"):
        client.embeddings.create(
            model="text-embedding-3-small", input=["ok", [1] * (MAX_TOKENS_PER_INPUT + 1)]
        )
    with pytest.raises(guardrail.InvalidRequestError, match="input"):
        client.embeddings.create(model="text-embedding-3-small", input=[3.5])
    assert server.requests == []


async def test_async_embeddings(server) -> None:
    guard, client, records = make(server, async_=True)
    out = await client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert out.data and records[-1].outcome == "ok"


# -- endpoints that are not metered -------------------------------------------------------


def test_unmetered_paid_calls_are_refused_under_a_limit(server) -> None:
    guard, client, _ = make(server, Policy(daily_spend_usd=5))
    with pytest.raises(UnmeteredCall, match="unmetered='allow'") as info:
        client.images.generate(model="gpt-image-1", prompt="a cat")
    assert info.value.endpoint == "images.generate" and info.value.tenant == "default"
    with pytest.raises(UnmeteredCall):
        client.with_raw_response.images.generate(model="gpt-image-1", prompt="a cat")
    with pytest.raises(UnmeteredCall):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    with pytest.raises(UnmeteredCall):
        client.batches.create(
            input_file_id="f", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert server.requests == []


def test_unmetered_calls_pass_when_allowed_or_unlimited(server, caplog) -> None:
    guard, client, _ = make(server, Policy(daily_spend_usd=5), unmetered="allow")
    with caplog.at_level("WARNING", logger="guardrail"), pytest.raises(openai.NotFoundError):
        client.images.generate(model="gpt-image-1", prompt="a cat")  # the fake has no images
    assert server.requests and server.requests[-1].path == "/v1/images/generations"
    free_guard, free, _ = make(server)  # no limit: nothing to pass around
    with pytest.raises(openai.NotFoundError):
        free.images.generate(model="gpt-image-1", prompt="a cat")


def test_every_listed_unmetered_method_is_replaced_where_the_sdk_has_it() -> None:
    client = Guard(Policy(daily_spend_usd=1)).wrap(openai.OpenAI(api_key="t"))
    checked = 0
    for path, names in UNMETERED.items():
        resource: Any = client
        try:
            for part in path.split("."):
                resource = getattr(resource, part)
        except AttributeError:
            continue  # an SDK release without this resource
        for name in names:
            method = getattr(type(resource), name, None)
            if method is None:
                continue
            with pytest.raises(UnmeteredCall):
                result = getattr(resource, name)(model="x")
                if inspect.isawaitable(result):  # pragma: no cover - the sync client
                    result.close()
            checked += 1
    assert checked > 20


def test_free_endpoints_are_the_sdks_own(server) -> None:
    guard, client, records = make(server, Policy(daily_spend_usd="0.000001"))
    assert [m.id for m in client.models.list()][:1] == ["gpt-4o"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    assert records == []


def test_an_azure_deployment_is_the_model_priced(server) -> None:
    # Azure bills the deployment a client was made for, whatever the body's model says.
    azure = openai.AzureOpenAI(
        azure_endpoint=server.url,
        api_key="t",
        api_version="2024-10-21",
        azure_deployment="prod-reasoner",
        max_retries=0,
    )
    client = Guard(Policy(daily_spend_usd=5, loop_limit=None)).wrap(azure)
    before = len(server.requests)
    with (
        pytest.warns(UserWarning, match="does not know model 'prod-reasoner'"),
        pytest.raises(guardrail.PriceUnavailable, match="prod-reasoner"),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert server.requests[before:] == []
