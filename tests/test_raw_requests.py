"""What reaches a guarded client's own ``request``: the SDK's low-level ``client.post`` /
``client.request``, a resource built by hand around the guarded client, and endpoints the
guard has no method for. Writes not known to be free are refused while a limit applies
(deny by default); reads, deletes and known free writes pass; ``Guard(unmetered="allow")``
lets the rest through, logged once per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import anthropic
import openai
import pytest

from guardrail import Guard, Policy, UnmeteredCall
from guardrail.providers.openai.client import FREE_WRITES
from guardrail.providers.raw_requests import FreeWrites
from guardrail.testing import FakeAnthropicServer, FakeOpenAIServer

HELLO = [{"role": "user", "content": "Say hello"}]
LIMIT = Policy(daily_spend_usd=5, loop_limit=None)


@pytest.fixture(scope="module")
def oai():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def ant():
    with FakeAnthropicServer() as server:
        yield server


def _sent(server: Any, before: int) -> list[str]:
    return [r.path for r in server.requests[before:]]


def _at(client: Any, path: str) -> Any:
    for part in path.split("."):
        client = getattr(client, part)
    return client


def _present(client_class: type, paths: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The cases whose method the installed SDK has (the minimum versions lack some)."""
    probe = client_class(api_key="x", base_url="http://127.0.0.1:9")
    found = []
    for path, kwargs in paths:
        try:
            _at(probe, path)
        except AttributeError:
            continue
        found.append(pytest.param(path, kwargs, id=path))
    return found


def test_client_post_of_a_paid_path_is_refused_and_nothing_is_sent(oai) -> None:
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    for path, body in (
        ("/chat/completions", {"model": "gpt-4o", "messages": HELLO}),
        ("/responses", {"model": "gpt-4o", "input": "hi"}),
        ("/images/generations", {"prompt": "a cat"}),
    ):
        with pytest.raises(UnmeteredCall) as refused:
            client.post(path, body=body, cast_to=object)
        assert refused.value.endpoint == f"POST {path}"
        assert "does not know to be free" in str(refused.value)
    assert _sent(oai, before) == []


def test_a_hand_built_resource_on_the_guarded_client_is_refused(oai) -> None:
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    with pytest.raises(UnmeteredCall):
        openai.resources.chat.Completions(client).create(model="gpt-4o", messages=HELLO)
    assert _sent(oai, before) == []


def test_async_client_post_is_refused(oai) -> None:
    client = Guard(LIMIT).wrap(openai.AsyncOpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)

    async def call() -> None:
        await client.post("/chat/completions", body={"model": "gpt-4o"}, cast_to=object)

    with pytest.raises(UnmeteredCall):
        asyncio.run(call())
    assert _sent(oai, before) == []


def test_anthropic_client_post_is_refused_and_count_tokens_is_free(ant) -> None:
    client = Guard(LIMIT).wrap(anthropic.Anthropic(base_url=ant.base_url, api_key="x"))
    before = len(ant.requests)
    with pytest.raises(UnmeteredCall):
        client.post(
            "/v1/messages",
            body={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": HELLO},
            cast_to=object,
        )
    assert _sent(ant, before) == []
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=HELLO)
    assert counted.input_tokens > 0
    assert _sent(ant, before) == ["/v1/messages/count_tokens"]


def test_reads_and_free_writes_pass_under_a_limit(oai) -> None:
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    client.models.list()
    client.post("/responses/input_tokens", body={"model": "gpt-4o", "input": "hi"}, cast_to=object)
    assert _sent(oai, before) == ["/v1/models", "/v1/responses/input_tokens"]


def test_guarded_methods_are_metered_not_refused(oai) -> None:
    guard = Guard(LIMIT)
    client = guard.wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_completion_tokens=5)
    assert guard.usage("default").spent_usd > 0


def test_allowed_unknown_writes_pass_and_are_logged_once(oai, caplog) -> None:
    client = Guard(LIMIT, unmetered="allow").wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    with caplog.at_level(logging.WARNING, logger="guardrail"):
        for _ in range(2):
            client.post(
                "/chat/completions",
                body={"model": "gpt-4o-mini", "messages": HELLO},
                cast_to=object,
            )
    assert _sent(oai, before) == ["/v1/chat/completions"] * 2
    said = [r.getMessage() for r in caplog.records if "POST /chat/completions" in r.getMessage()]
    assert len(said) <= 1  # once per process (an earlier test in this process may have said it)


def test_an_unmetered_method_is_checked_once_not_again_at_its_request(oai, caplog) -> None:
    client = Guard(LIMIT, unmetered="allow").wrap(
        openai.OpenAI(base_url=oai.base_url, api_key="x", max_retries=0)
    )
    # The fake has no images route: what matters is what was logged.
    with (
        caplog.at_level(logging.WARNING, logger="guardrail"),
        contextlib.suppress(openai.APIStatusError),
    ):
        client.images.generate(prompt="a cat", model="gpt-image-1")
    assert not [r for r in caplog.records if "POST /images" in r.getMessage()]


OPENAI_PAID = [
    ("realtime.calls.create", {"sdp": "v=0", "session": {"type": "realtime"}}),
    ("realtime.calls.accept", {"call_id": "c1", "type": "realtime", "model": "gpt-realtime"}),
    ("live.sessions.accept", {"session_id": "s1", "session": {"type": "live"}}),
    ("beta.agents.sessions.create", {"environment": {"type": "cloud"}, "input": "hi"}),
    ("beta.chatkit.sessions.create", {"user": "u", "workflow": {"id": "wf"}}),
    (
        "fine_tuning.alpha.graders.run",
        {"grader": {"type": "string_check"}, "model_sample": "x"},
    ),
]


@pytest.mark.parametrize(("path", "kwargs"), _present(openai.OpenAI, OPENAI_PAID))
def test_endpoints_the_guard_has_no_method_for_are_refused(
    oai, path: str, kwargs: dict[str, Any]
) -> None:
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url=oai.base_url, api_key="x", max_retries=0))
    before = len(oai.requests)
    with pytest.raises(UnmeteredCall):
        _at(client, path)(**kwargs)
    assert _sent(oai, before) == []


SOCKETS = [
    ("realtime.translations.connect", {"model": "gpt-realtime"}),
    ("live.forks.connect", {"session_id": "s1"}),
    ("live.sideband.connect", {"session_id": "s1"}),
]


@pytest.mark.parametrize(("path", "kwargs"), _present(openai.OpenAI, SOCKETS))
def test_websocket_sessions_are_refused(path: str, kwargs: dict[str, Any]) -> None:
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x"))
    with pytest.raises(UnmeteredCall):
        _at(client, path)(**kwargs)


@pytest.mark.parametrize(
    "path",
    ["/organization/../chat/completions", "/files/%2e%2e/chat/completions", "/files%2F..%2Fimages"],
)
def test_a_free_prefix_with_dot_segments_is_not_free(oai, path: str) -> None:
    # The HTTP client resolves dot segments: /organization/../chat/completions is sent as
    # /chat/completions.
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    with pytest.raises(UnmeteredCall):
        client.post(path, body={"model": "gpt-4o", "messages": HELLO}, cast_to=object)
    assert _sent(oai, before) == []


def test_free_write_patterns() -> None:
    free = FreeWrites(
        ("/files", "/uploads/*/parts", "/organization/**", "/threads/*"), ("/threads/runs",)
    )
    assert "/files" in free and "/uploads/up_1/parts" in free
    assert "/organization" in free and "/organization/projects/p1/users" in free
    assert "/threads/thread_1" in free and "/threads/runs" not in free
    assert "/uploads/up_1" not in free and "/files/f1/content" not in free
    assert "/chat/completions" not in FREE_WRITES and "/responses" not in FREE_WRITES
    assert "/threads/runs" not in FREE_WRITES and "/threads/t1/runs" not in FREE_WRITES
    assert "/responses/input_tokens" in FREE_WRITES and "/files" in FREE_WRITES


@pytest.mark.parametrize("build", ["class", "unbound copy"])
def test_a_client_built_without_wrap_says_how_to_get_a_guarded_one(oai, build: str) -> None:
    client = Guard(LIMIT).wrap(openai.OpenAI(base_url=oai.base_url, api_key="x"))
    before = len(oai.requests)
    with pytest.raises(TypeError, match=r"guard\.wrap"):
        twin = (
            type(client)(base_url=oai.base_url, api_key="x")
            if build == "class"
            else openai.OpenAI.copy(client)
        )
        twin.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert _sent(oai, before) == []
