"""Prompt-token counting: the OpenAI cookbook's figures first, then everything around them."""

from __future__ import annotations

import base64
import math
import struct
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.catalog.models import model_info
from guardrail.counting import (
    CLAUDE_SAFETY_MARGIN,
    REPLY_PRIMING,
    TOKENS_PER_TOOL_CALL,
    TokenCounter,
    count_messages,
    count_text,
    counter_for,
)
from guardrail.counting.text import TextCache
from guardrail.errors import GuardrailError, InvalidRequestError, UnknownModelError

# The OpenAI cookbook "How to count tokens with tiktoken", section 6: checked there against
# the API's usage.prompt_tokens.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

# Section 7: the weather tool.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_conversation(model: str, expected: int) -> None:
    assert count_messages(COOKBOOK_MESSAGES, model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_weather_tool(model: str, expected: int) -> None:
    assert count_messages(COOKBOOK_TOOL_MESSAGES, model, tools=COOKBOOK_TOOLS) == expected


# ----------------------------------------------------------------------------- helpers


def enc(model: str) -> Callable[[str], int]:
    encoding = tiktoken.get_encoding(model_info(model).encoding)
    return lambda s: len(encoding.encode_ordinary(s))


# ----------------------------------------------------------------------------- messages


def test_per_message_overhead_name_and_reply_priming() -> None:
    t = enc("gpt-4o")
    plain = {"role": "user", "content": "Hello there"}
    named = {"role": "user", "name": "alice", "content": "Hello there"}
    c = TokenCounter("gpt-4o")
    assert c.message(plain) == 3 + t("user") + t("Hello there")
    assert c.message(named) == c.message(plain) + 1 + t("alice")
    assert c.reply_priming == REPLY_PRIMING == 3
    assert c.messages([plain, named]) == c.message(plain) + c.message(named) + 3
    assert count_messages([], "gpt-4o") == 3


def test_messages_equals_the_sum_of_its_parts() -> None:
    c = TokenCounter("gpt-4o")
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "bob"},
        {"role": "assistant", "content": None, "tool_calls": [_call("lookup", '{"q": "x"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "result"},
        {"role": "user", "content": [{"type": "text", "text": "and?"}]},
    ]
    assert c.messages(msgs) == sum(c.message(m) for m in msgs) + c.reply_priming
    assert c.messages(msgs, COOKBOOK_TOOLS) == c.messages(msgs) + c.tools(COOKBOOK_TOOLS)
    assert c.messages(tuple(msgs)) == c.messages(msgs)


def _call(name: str, arguments: str, call_id: str = "call_abc") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_assistant_tool_calls() -> None:
    t = enc("gpt-4o")
    args1, args2 = '{"location": "Paris", "unit": "celsius"}', '{"city": "Oslo"}'
    msg = {
        "role": "assistant",
        "content": None,
        "tool_calls": [_call("get_weather", args1), _call("get_time", args2, "call_x")],
    }
    calls = (TOKENS_PER_TOOL_CALL + t("get_weather") + t(args1)) + (
        TOKENS_PER_TOOL_CALL + t("get_time") + t(args2)
    )
    assert TokenCounter("gpt-4o").message(msg) == 3 + t("assistant") + calls


def test_legacy_function_call_and_function_message() -> None:
    t = enc("gpt-4")
    args = '{"a": 1}'
    msg = {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": args}}
    c = TokenCounter("gpt-4")
    assert c.message(msg) == 3 + t("assistant") + TOKENS_PER_TOOL_CALL + t("f") + t(args)
    result = {"role": "function", "name": "f", "content": "42"}
    assert c.message(result) == 3 + t("function") + t("f") + 1 + t("42")


def test_tool_message_does_not_bill_the_call_id() -> None:
    t = enc("gpt-4o")
    msg = {"role": "tool", "tool_call_id": "call_Id8ycVMsW8gdsf7kSXfgAcf1", "content": "29 C"}
    assert TokenCounter("gpt-4o").message(msg) == 3 + t("tool") + t("29 C")


def test_published_tool_call_measurement_is_not_undercounted() -> None:
    # openai-java issue #5 (gpt-4): the API reported 35 prompt tokens for this request.
    msgs = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                _call(
                    "get_current_weather",
                    '{\n  "location": "Boston, MA"\n}',
                    "call_Id8ycVMsW8gdsf7kSXfgAcf1",
                )
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_Id8ycVMsW8gdsf7kSXfgAcf1",
            "name": "get_current_weather",
            "content": "29 degree celcius",
        },
    ]
    assert 35 <= count_messages(msgs, "gpt-4") <= 37


def test_content_parts_refusal_file_and_unknown_keys() -> None:
    t = enc("gpt-4o")
    c = TokenCounter("gpt-4o")
    parts = {
        "role": "user",
        "content": [
            {"type": "text", "text": "first part"},
            {"type": "text", "text": "second part"},
            {"type": "file", "file": {"filename": "report.pdf", "file_data": "JVBERi0="}},
        ],
    }
    assert c.message(parts) == 3 + t("user") + t("first part") + t("second part") + t("report.pdf")
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert c.message(refusal) == 3 + t("assistant") + t("I can't help with that.")
    refusal_part = {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}
    assert c.message(refusal_part) == 3 + t("assistant") + t("No.")
    # Unknown keys with string values are counted like the cookbook counts every value.
    extra = {"role": "assistant", "content": "ok", "reasoning_content": "thinking hard"}
    assert c.message(extra) == 3 + t("assistant") + t("ok") + t("thinking hard")
    # An audio reference on an assistant message is not countable: it adds nothing.
    audio_ref = {"role": "assistant", "content": "ok", "audio": {"id": "audio_123"}}
    assert c.message(audio_ref) == 3 + t("assistant") + t("ok")


def _wav(seconds: float, rate: int = 16000) -> bytes:
    data = b"\x00\x00" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_input_audio_counts_ten_tokens_per_second() -> None:
    t = enc("gpt-4o")
    c = TokenCounter("gpt-4o")
    wav = base64.b64encode(_wav(2.5)).decode()
    msg = {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}],
    }
    assert c.message(msg) == 3 + t("user") + 25
    # An MP3 at 128 kbit/s: the duration follows from the first frame header.
    frame = b"\xff\xfb\x90\x00" + b"\x00" * 413
    mp3 = base64.b64encode(frame * 300).decode()  # 300 * 417 bytes at 16 kB/s = 7.82 s
    msg["content"] = [{"type": "input_audio", "input_audio": {"data": mp3, "format": "mp3"}}]
    assert c.message(msg) == 3 + t("user") + math.ceil(300 * 417 * 8 / 128_000 * 10)


def test_sdk_message_objects_count_like_dicts() -> None:
    from openai.types.chat import ChatCompletionMessage

    obj = ChatCompletionMessage(role="assistant", content="Sure, here it is.")
    as_dict = {"role": "assistant", "content": "Sure, here it is."}
    assert count_messages([obj], "gpt-4o") == count_messages([as_dict], "gpt-4o")


# ----------------------------------------------------------------------------- tools


def test_tools_with_enums_nested_objects_and_arrays() -> None:
    t = enc("gpt-4o")
    k = model_info("gpt-4o").tool_constants
    tool = {
        "type": "function",
        "function": {
            "name": "book",
            "description": "Book a table.",
            "parameters": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer", "description": "People", "enum": [2, 4]},
                    "guest": {
                        "type": "object",
                        "description": "Who books.",
                        "properties": {
                            "name": {"type": "string", "description": "Full name"},
                            "vip": {"type": "boolean"},
                        },
                        "required": ["name"],
                    },
                    "tags": {
                        "type": "array",
                        "description": "Labels",
                        "items": {"type": "string", "enum": ["quiet", "window"]},
                    },
                },
            },
        },
    }
    expected = k["func_init"] + t("book:Book a table")
    expected += k["prop_init"]
    expected += k["prop_key"] + t("size:integer:People")
    expected += k["enum_init"] + 2 * k["enum_item"] + t("2") + t("4")
    expected += k["prop_key"] + t("guest:object:Who books")
    expected += k["prop_init"]  # the nested object's properties, counted like top-level ones
    expected += k["prop_key"] + t("name:string:Full name")
    expected += k["prop_key"] + t("vip:boolean:")
    expected += k["prop_key"] + t("tags:array:Labels")
    expected += k["enum_init"] + 2 * k["enum_item"] + t("quiet") + t("window")
    expected += k["func_end"]
    assert TokenCounter("gpt-4o").tools([tool]) == expected


def test_tool_without_parameters_legacy_functions_and_custom_tools() -> None:
    t = enc("gpt-4")
    k = model_info("gpt-4").tool_constants
    c = TokenCounter("gpt-4")
    bare = {"type": "function", "function": {"name": "ping"}}
    assert c.tools([bare]) == k["func_init"] + t("ping:") + k["func_end"]
    legacy = {"name": "ping", "description": "Ping."}
    assert c.tools([legacy]) == k["func_init"] + t("ping:Ping") + k["func_end"]
    custom = {"type": "custom", "custom": {"name": "sql", "description": "Run SQL"}}
    strings = t("custom") + t("name") + t("sql") + t("description") + t("Run SQL")
    assert c.tools([custom]) == k["func_init"] + strings + k["func_end"]
    assert c.tools([]) == 0
    assert c.tools(None) == 0


def test_schema_keywords_beyond_the_cookbook_err_high() -> None:
    c = TokenCounter("gpt-4o")
    base = {"type": "string", "description": "When"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {}}}}
    plain = c.tools([_with_prop(tool, base)])
    assert c.tools([_with_prop(tool, {**base, "format": "date-time"})]) > plain
    either = {**base, "anyOf": [{"type": "string"}, {"type": "null"}]}
    assert c.tools([_with_prop(tool, either)]) > plain


def _with_prop(tool: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    fn = {**tool["function"], "parameters": {"type": "object", "properties": {"when": schema}}}
    return {"type": "function", "function": fn}


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize("special", ["<|endoftext|>", "<|im_start|>", "<|fim_prefix|>"])
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_special_token_strings_are_ordinary_text(special: str, model: str) -> None:
    text = f"before {special} after"
    assert count_text(text, model) == enc(model)(text)
    assert count_text(special, model) > 1  # several ordinary tokens, not one special token
    msgs = [{"role": "user", "content": text}]
    assert count_messages(msgs, model) == 3 + enc(model)("user") + enc(model)(text) + 3


def test_count_text_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        count_text(b"bytes", "gpt-4o")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["ft:gpt-4o-mini:my-org::abc123", "gpt-4o-mini-2024-07-18", "azure/gpt-4o-mini"]
)
def test_fine_tuned_dated_and_prefixed_names_count_like_the_base(name: str) -> None:
    assert count_messages(COOKBOOK_MESSAGES, name) == 124
    assert count_messages(COOKBOOK_TOOL_MESSAGES, name, tools=COOKBOOK_TOOLS) == 101


def test_gpt_4o_dated_snapshot() -> None:
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4o-2024-08-06") == 124


def test_unknown_model_warns_once_and_strict_raises() -> None:
    name = f"acme-llm-{uuid.uuid4().hex}"
    with pytest.warns(UserWarning, match="does not know model"):
        first = count_messages(COOKBOOK_MESSAGES, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert count_messages(COOKBOOK_MESSAGES, name) == first == 124  # o200k_base
    with pytest.raises(UnknownModelError):
        count_messages(COOKBOOK_MESSAGES, f"acme-llm-{uuid.uuid4().hex}", strict=True)


def test_claude_counts_are_a_marked_up_estimate() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 7
    o200k = enc("gpt-4o")(text)
    assert count_text(text, "claude-sonnet-4") == math.ceil(o200k * CLAUDE_SAFETY_MARGIN)
    assert count_text(text, "claude-sonnet-4") > o200k
    counter = counter_for("claude-sonnet-4")
    assert counter.exact is False and TokenCounter("gpt-4o").exact is True


def test_counter_for_is_cached_and_accepts_model_info() -> None:
    assert counter_for("gpt-4o") is counter_for("gpt-4o")
    info = model_info("gpt-4.1")
    assert counter_for(info) is counter_for(info)
    assert counter_for(info).encoding == "o200k_base"
    assert counter_for("gpt-4").encoding == "cl100k_base"


# ----------------------------------------------------------------------------- malformed

BAD: list[tuple[Any, str]] = [
    ("hello", "messages must be a list"),
    ({"role": "user", "content": "x"}, "messages must be a list"),
    ([{"role": "user", "content": "x"}, "oops"], "messages[1] must be a dict"),
    ([{"role": "user", "content": "x"}, {"content": "x"}], "messages[1] has no 'role'"),
    ([{"role": 5, "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content must be"),
    ([{"role": "user", "content": {"text": "x"}}], "messages[0].content must be"),
    ([{"role": "user", "content": "x", "name": 3}], "messages[0].name"),
    ([{"role": "user", "content": ["x"]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0] has no 'type'"),
    ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "messages[0].content[0].text"),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        "messages[0].content[0].image_url.url",
    ),
    (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [_call("f", {"a": 1})]},  # type: ignore[arg-type]
        ],
        "messages[1].tool_calls[0].function.arguments",
    ),
    ([{"role": "assistant", "tool_calls": {"a": 1}}], "messages[0].tool_calls must be a list"),
    ([{"role": "assistant", "tool_calls": [{"id": "x"}]}], "messages[0].tool_calls[0]"),
    ([{"role": "assistant", "function_call": "f"}], "messages[0].function_call"),
    ([{"role": "tool", "tool_call_id": 7, "content": "x"}], "messages[0].tool_call_id"),
    (
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:x;base64,@@"}}],
            }
        ],
        "messages[0].content[0].image_url",
    ),
]


@pytest.mark.parametrize(("messages", "fragment"), BAD)
def test_malformed_messages_raise_naming_the_problem(messages: Any, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        count_messages(messages, "gpt-4o")
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    ("tools", "fragment"),
    [
        ({"name": "f"}, "tools must be a list"),
        (["f"], "tools[0] must be a dict"),
        ([{"type": "function", "function": {"description": "d"}}], "tools[0].function.name"),
        ([{"type": "function", "function": "f"}], "tools[0].function must be a dict"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"properties": []}}}],
            "properties must be a dict",
        ),
        (
            [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"properties": {"a": {"enum": 3}}}},
                }
            ],
            "enum must be a list",
        ),
    ],
)
def test_malformed_tools_raise(tools: Any, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        count_messages([{"role": "user", "content": "x"}], "gpt-4o", tools=tools)
    assert fragment in str(exc.value)


def test_cyclic_structure_raises_instead_of_recursing_forever() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidRequestError, match="nested"):
        count_messages([{"role": "user", "content": "x", "meta": loop}], "gpt-4o")


# ----------------------------------------------------------------------------- cache


class CountingEncode:
    """Wraps Encoding.encode_ordinary and records which texts were encoded."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.real = tiktoken.Encoding.encode_ordinary

    def __call__(self, encoding: tiktoken.Encoding, text: str) -> list[int]:
        self.texts.append(text)
        return self.real(encoding, text)


def _conversation(n: int, salt: str = "") -> list[dict[str, str]]:
    return [
        {"role": ("user", "assistant")[i % 2], "content": f"{salt}message {i}: " + "word " * i}
        for i in range(n)
    ]


def test_recounting_a_conversation_encodes_only_new_messages() -> None:
    spy = CountingEncode()
    with mock.patch.object(tiktoken.Encoding, "encode_ordinary", autospec=True, side_effect=spy):
        counter = TokenCounter("gpt-4o", cache=False)  # private cache, built on the spy
        msgs = _conversation(50)
        first = counter.messages(msgs)
        assert len(spy.texts) == 52  # 50 contents + "user" + "assistant"
        spy.texts.clear()
        assert counter.messages(msgs) == first
        assert spy.texts == []  # nothing re-encoded
        msgs.append({"role": "user", "content": "one more"})
        counter.messages(msgs)
        assert spy.texts == ["one more"]
    # The cached figures are the real ones.
    assert first == TokenCounter("gpt-4o", cache=False).messages(_conversation(50))


def test_cache_is_shared_by_counters_of_one_encoding() -> None:
    msgs = _conversation(5, salt=uuid.uuid4().hex)
    TokenCounter("gpt-4o").messages(msgs)
    spy = CountingEncode()
    with mock.patch.object(tiktoken.Encoding, "encode_ordinary", autospec=True, side_effect=spy):
        TokenCounter("gpt-4o-mini").messages(msgs)  # same o200k_base cache
    assert spy.texts == []


def test_cache_is_bounded_and_stays_correct() -> None:
    encoding = tiktoken.get_encoding("o200k_base")
    cache = TextCache(encoding.encode_ordinary, max_entries=16, max_chars=400)
    texts = [f"text number {i} " * (i % 5 + 1) for i in range(200)]
    for text in texts * 2:
        assert cache[text] == len(encoding.encode_ordinary(text))
        assert len(cache) <= 16
        assert sum(map(len, cache)) <= 400
    cache.clear()
    assert len(cache) == 0


def test_long_strings_are_counted_but_not_kept() -> None:
    counter = TokenCounter("gpt-4o", cache=False)
    huge = "lorem ipsum " * 100_000  # 1.2M characters, over CACHE_MAX_STRING
    assert counter.text(huge) == enc("gpt-4o")(huge)
    assert huge not in counter._cache


def test_threads_counting_at_once_agree() -> None:
    conversations = [_conversation(40, salt=f"t{k}-") for k in range(4)]
    reference = [TokenCounter("gpt-4o", cache=False).messages(c) for c in conversations]
    counter = TokenCounter("gpt-4o", cache=False)
    counter._cache.max_entries = 30  # small: forces evictions while threads read
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        barrier.wait()
        results[k] = [counter.messages(conversations[(k + j) % 4]) for j in range(40)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(8):
        assert results[k] == [reference[(k + j) % 4] for j in range(40)]


# ----------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
message_keys = st.sampled_from(
    ["role", "content", "name", "tool_calls", "function_call", "tool_call_id", "refusal", "x"]
)
messageish = st.dictionaries(message_keys, json_values, max_size=5)
anything = st.one_of(json_values, st.lists(messageish, max_size=4), st.lists(json_values))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(messages=anything, tools=st.one_of(st.none(), json_values))
def test_any_json_input_counts_or_raises_a_clear_error(messages: Any, tools: Any) -> None:
    try:
        n = count_messages(messages, "gpt-4o", tools=tools)
    except (GuardrailError, TypeError, ValueError) as exc:
        assert str(exc)
    else:
        assert isinstance(n, int) and n >= 0


roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
well_formed = st.lists(
    st.fixed_dictionaries(
        {"role": roles, "content": st.text(max_size=200)},
        optional={"name": st.text(alphabet="abcdefghij_", min_size=1, max_size=10)},
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(messages=well_formed, model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4"]))
def test_well_formed_count_is_at_least_the_text(messages: list[dict[str, str]], model: str) -> None:
    t = enc("gpt-4o" if model.startswith("claude") else model)
    n = count_messages(messages, model)
    text = sum(t(v) for m in messages for v in m.values())
    assert n >= text + 3 * len(messages) + 3
    # The fast path and the checked path agree.
    counter = counter_for(model)
    assert n == sum(counter.message(m) for m in messages) + 3


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(max_size=50), max_size=10))
def test_cached_and_uncached_counts_agree(texts: Sequence[str]) -> None:
    shared, private = TokenCounter("gpt-4o"), TokenCounter("gpt-4o", cache=False)
    for text in texts:
        assert shared.text(text) == private.text(text) == enc("gpt-4o")(text)
