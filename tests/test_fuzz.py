"""Hostile input, fuzzed: the guarded create (sync, async, streaming; OpenAI and Anthropic,
through the real SDKs against the loopback fakes) and every public function either work
or raise a :class:`guardrail.GuardrailError`, and a refused request sends nothing and
holds nothing. Any other exception (TypeError, RecursionError, the SDK's serializer
failing after a reservation...) fails the test."""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardrail
import guardrail.counting
from guardrail import Guard, GuardrailError, MemoryStore, Policy

FUZZ = settings(
    max_examples=60,  # the whole file runs in ~15 s; run with more examples when changing it
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def deep(n: int, leaf: Any = "x", key: str | None = None) -> Any:
    value = leaf
    for _ in range(n):
        value = {key: value} if key else [value]
    return value


def deep_schema(n: int, keyword: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(n):
        schema = {"type": "array", "items": schema} if keyword == "items" else {keyword: [schema]}
    return schema


class Deep:
    """Stands for a value nested thousands of levels deep, built only when the call is made
    (hypothesis prints its examples, and printing a 3,000-deep list overflows the stack)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"Deep({self.kind!r})"

    def build(self) -> Any:
        if self.kind in ("items", "anyOf", "oneOf", "allOf"):
            return [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": deep_schema(3000, self.kind)},
                }
            ]
        if self.kind == "dict":
            return deep(3000, key="k")
        if self.kind == "part":
            return {"type": "text", "text": deep(3000)}
        return deep(3000)


def resolve(value: Any) -> Any:
    if isinstance(value, Deep):
        return value.build()
    if type(value) is dict:
        return {k: resolve(v) for k, v in value.items()}
    if type(value) is list:
        return [resolve(v) for v in value]
    return value


SPECIAL = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        2**70,
        math.nan,
        math.inf,
        -0.0,
        Decimal("1.5"),
        Decimal("NaN"),
        b"bytes",
        bytearray(b"x"),
        "\ud800",
        "a\udfffb",
        "",
        "x" * 300,
        "\x00",
        object(),
        {1: "non-str key"},
        Deep("list"),
        Deep("dict"),
        Deep("part"),
        set(),
        (),
        frozenset({1}),
    ]
)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    SPECIAL,
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["type", "text", "role", "content", "x"]), inner, max_size=3
        ),
    ),
    max_leaves=8,
)
ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool", "wizard", ""])
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLES, "content": st.one_of(st.text(max_size=30), VALUE)}),
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.lists(VALUE, min_size=1, max_size=2)}
    ),
    VALUE,
)
GOOD = [{"role": "user", "content": "Hello there"}]
MESSAGES = st.one_of(st.just(GOOD), st.lists(MESSAGE, max_size=3), VALUE)
TOOLS = st.one_of(
    VALUE,
    st.sampled_from([Deep(k) for k in ("items", "anyOf", "oneOf", "allOf")]),
    st.just([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
)
OPENAI_PARAMS = {
    "temperature": VALUE,
    "top_p": VALUE,
    "max_tokens": VALUE,
    "max_completion_tokens": VALUE,
    "n": VALUE,
    "stream": VALUE,
    "stream_options": VALUE,
    "tools": TOOLS,
    "tool_choice": VALUE,
    "user": VALUE,
    "safety_identifier": VALUE,
    "metadata": VALUE,
    "stop": VALUE,
    "seed": VALUE,
    "response_format": VALUE,
    "logit_bias": VALUE,
    "presence_penalty": VALUE,
}
ANTHROPIC_PARAMS = {
    "max_tokens": VALUE,
    "temperature": VALUE,
    "system": VALUE,
    "stream": VALUE,
    "tools": TOOLS,
    "tool_choice": VALUE,
    "metadata": VALUE,
    "stop_sequences": VALUE,
    "top_k": VALUE,
    "thinking": VALUE,
}


def request(params: dict[str, Any], models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    picked = st.lists(st.sampled_from(sorted(params)), max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: params[n] for n in names})
    )
    base = st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(models), VALUE), "messages": MESSAGES}
    )
    return st.tuples(base, picked).map(lambda t: {**t[0], **t[1]})


OPENAI_REQUESTS = request(OPENAI_PARAMS, ["gpt-4o", "gpt-4o-mini", "o3", "x" * 100_000])
ANTHROPIC_REQUESTS = request(ANTHROPIC_PARAMS, ["claude-sonnet-4-5", "claude-opus-4-1"])


def checked(call: Callable[[], Any], sent: Callable[[], int], guard: Guard) -> None:
    """``call()`` works, or raises a GuardrailError having sent and held nothing."""
    before = sent()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown-model warnings
            call()
    except GuardrailError:
        assert sent() == before, "refused, yet the request was sent"
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:  # pragma: no cover
        pytest.fail(f"sent a request the provider rejected: {exc}")
    assert guard.usage("fuzz").reserved_usd == 0


def consume(result: Any) -> None:
    if hasattr(result, "__iter__") and not isinstance(result, (str, bytes, dict)):
        for _ in result:
            pass


async def aconsume(result: Any) -> None:
    if hasattr(result, "__aiter__"):
        async for _ in result:
            pass


CALLS = settings(FUZZ, max_examples=40)  # each example makes a real HTTP call or two


def guard() -> Guard:
    return Guard(Policy(loop_limit=None, max_attempts=1), store=MemoryStore())


@CALLS
@given(kwargs=OPENAI_REQUESTS)
def test_guarded_openai_create_sync(server: Any, kwargs: dict[str, Any]) -> None:
    kwargs = resolve(kwargs)
    g = guard()
    client = g.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    create = client.for_tenant("fuzz").chat.completions.create
    checked(lambda: consume(create(**kwargs)), lambda: len(server.chat_requests), g)


@CALLS
@given(kwargs=OPENAI_REQUESTS)
def test_guarded_openai_create_async(server: Any, kwargs: dict[str, Any]) -> None:
    kwargs = resolve(kwargs)
    g = guard()

    async def go() -> None:
        raw = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
        client = g.wrap(raw).for_tenant("fuzz")
        try:
            await aconsume(await client.chat.completions.create(**kwargs))
        finally:
            await raw.close()

    checked(lambda: asyncio.run(go()), lambda: len(server.chat_requests), g)


@CALLS
@given(kwargs=OPENAI_REQUESTS)
def test_guarded_openai_stream(server: Any, kwargs: dict[str, Any]) -> None:
    kwargs = resolve(kwargs)
    g = guard()
    client = g.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    create = client.for_tenant("fuzz").chat.completions.create
    checked(
        lambda: consume(create(**{**kwargs, "stream": True})), lambda: len(server.chat_requests), g
    )


@CALLS
@given(kwargs=ANTHROPIC_REQUESTS)
def test_guarded_anthropic_create(fake: Any, kwargs: dict[str, Any]) -> None:
    kwargs = resolve(kwargs)
    g = guard()
    raw = anthropic.Anthropic(base_url=fake.base_url, api_key="t", max_retries=0)
    create = g.wrap(raw, exact_count=False).for_tenant("fuzz").messages.create
    checked(lambda: consume(create(**kwargs)), lambda: len(fake.message_requests), g)


# -- every public function ------------------------------------------------------------

MODEL = st.one_of(st.sampled_from(["gpt-4o", "claude-sonnet-4-5", "gpt-4"]), VALUE)


def public_ok(call: Callable[[], Any]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except GuardrailError:
        pass


@FUZZ
@given(text=VALUE, model=MODEL, messages=MESSAGES, tools=TOOLS, n=VALUE)
def test_counting_functions(text: Any, model: Any, messages: Any, tools: Any, n: Any) -> None:
    text, model, messages, tools, n = map(resolve, (text, model, messages, tools, n))
    public_ok(lambda: guardrail.count_text(text, model))
    public_ok(lambda: guardrail.count_messages(messages, model, tools=tools))
    public_ok(lambda: guardrail.model_info(model))
    public_ok(lambda: guardrail.estimate_cost(model, n, n))
    public_ok(lambda: guardrail.usage_cost(model, text))
    public_ok(lambda: guardrail.truncate_text(text, n, model))


@FUZZ
@given(messages=MESSAGES, model=MODEL, n=VALUE, tools=TOOLS, extra=VALUE)
def test_trimming_functions(messages: Any, model: Any, n: Any, tools: Any, extra: Any) -> None:
    messages, model, n, tools, extra = map(resolve, (messages, model, n, tools, extra))
    public_ok(lambda: guardrail.trim_messages(messages, model, n, tools=tools))
    public_ok(
        lambda: guardrail.fit_messages(
            messages, guardrail.counting.counter_for("gpt-4o"), n, max_history_messages=extra
        )
    )
    public_ok(lambda: guardrail.trim_messages(GOOD, "gpt-4o", 1000, max_history_messages=extra))


@FUZZ
@given(docs=VALUE, model=MODEL, n=VALUE, extra=VALUE)
def test_prompt_toolkit_functions(docs: Any, model: Any, n: Any, extra: Any) -> None:
    docs, model, n, extra = map(resolve, (docs, model, n, extra))
    public_ok(lambda: guardrail.pack_documents(docs, n, model))
    public_ok(lambda: guardrail.pack_documents([guardrail.Document("a", 1.0)], n, model))
    public_ok(lambda: guardrail.Document(docs, extra))
    public_ok(lambda: guardrail.allocate(n, docs, headroom=extra))
    public_ok(lambda: guardrail.allocate(1000, [guardrail.BudgetPart("a", n, extra)]))
    public_ok(lambda: guardrail.TokenBudget(model, reserve_output=n, context_window=extra))
    public_ok(lambda: guardrail.PromptBuilder(model, reserve_output=n).build(context=extra))
    public_ok(
        lambda: guardrail.PromptBuilder("gpt-4o", reserve_output=100).build(
            system=docs, history=extra, context=n
        )
    )
    public_ok(lambda: guardrail.ConversationMemory(model, n, pinned=extra))
    public_ok(lambda: guardrail.ConversationMemory("gpt-4o", 1000).add(docs))
    public_ok(lambda: guardrail.Policy(daily_spend_usd=docs, loop_limit=n))
    public_ok(lambda: guardrail.register_model("fuzz-model", like=model, context_window=n))
