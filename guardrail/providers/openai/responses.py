"""The Responses API adapter: reads and rewrites ``responses.create`` / ``parse`` /
``compact`` requests for the engine, and reads usage back from responses and stream events.

Counting. OpenAI publishes no counting rules for the Responses API; the model reads the
same conversation as through Chat Completions, so guardrail counts each input item by the
cookbook's rules for its Chat Completions twin (:mod:`guardrail.counting`):

* ``instructions`` is a developer message; a string ``input`` one user message;
* a message item is a message, its ``input_text``/``output_text`` parts text parts,
  ``input_image`` an image part (OpenAI's vision rule; a ``file_id`` or a URL is counted at
  the worst case of its detail), ``input_file`` a file part, ``input_audio`` audio;
* ``function_call`` is an assistant message with one tool call (name and arguments),
  ``function_call_output`` a tool message (its output);
* function tools are counted as Chat Completions tools; a ``text.format`` JSON schema (or
  ``parse``'s ``text_format`` model) costs every key and string in it; the reply is primed
  with 3 tokens.

What cannot be counted locally makes the engine ask the provider
(``POST /v1/responses/input_tokens``) and reserve the larger count, or refuse the call if
the count fails: ``reasoning`` items passed back (their encrypted content), item
references, built-in tool calls and their results, and built-in tools (they bring prompts
of their own). ``previous_response_id`` and ``conversation`` refer to history the provider
keeps: it is reserved from what guardrail recorded when it settled the earlier response,
else from the provider's count, never as zero.

Fees. Web searches and file searches are billed per call, and a code-interpreter tool with
an ``auto`` container creates (and bills) a container: the request reserves
``max_tool_calls`` of each (else :data:`BUILTIN_TOOL_ASSUMED_CALLS`, an assumption) and one
container, and settles what the response's output items show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.documents import uncountable_parts
from guardrail.counting.messages import REPLY_PRIMING, TokenCounter, counter_for
from guardrail.counting.responses import as_message, as_tool, output_schema, plain
from guardrail.engine.adapter import RequestView, ServerState
from guardrail.engine.drivers import parsed_raw
from guardrail.engine.request_check import check_body, check_number, check_stream, from_body
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import ConfigurationError, InvalidRequestError
from guardrail.prompt.trimming import Summarizer, TrimResult
from guardrail.prompt.turns import fit_turns
from guardrail.providers.common import given, request_id_of, usage_field, usage_of
from guardrail.providers.openai.chat import hidden_reasoning, requested_tier, service_tier_of

__all__ = [
    "BUILTIN_TOOL_ASSUMED_CALLS",
    "ResponsesAdapter",
    "count_request_input",
    "materialise_input",
]

BUILTIN_TOOL_ASSUMED_CALLS = 10
"""Calls reserved per fee-bearing built-in tool (web search, file search) when the request
sets no ``max_tool_calls``: an assumption, not a bound (set ``max_tool_calls`` to make the
bound exact). Actual calls are settled at their price."""

_FEE_TOOLS = {"web_search": "web", "web_search_preview": "web", "file_search": "file"}


def _type(value: object) -> str:
    return type(value).__name__


def _items(value: Any) -> list[Mapping[str, Any]]:
    """``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list | tuple):
        raise InvalidRequestError(
            f"input must be a string or a list of input items, got {_type(value)}"
        )
    items: list[Mapping[str, Any]] = []
    for i, item in enumerate(value):
        if type(item) is dict:  # plain() would return it as it is
            items.append(item)
            continue
        item = plain(item)
        if not isinstance(item, Mapping):
            raise InvalidRequestError(f"input[{i}] must be an input item dict, got {_type(item)}")
        items.append(item)
    return items


def materialise_input(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``input`` and ``tools`` given as one-shot iterables, read once: what is counted is
    what is sent."""
    for name in ("input", "tools"):
        value = kwargs.get(name)
        if (
            given(value)
            and not isinstance(value, list | tuple | str | bytes | Mapping)
            and isinstance(value, Iterable)
        ):
            kwargs = {**kwargs, name: list(value)}
    return kwargs


def _fixed_tokens(counter: TokenCounter, view: RequestView) -> int:
    """What every trimmed version of the request costs: instructions, tools, schema,
    priming."""
    total = REPLY_PRIMING
    extra = view.extra if isinstance(view, ResponsesView) else _NO_EXTRA
    if extra.instructions:
        total += counter.message({"role": "developer", "content": extra.instructions})
    if view.tools:
        total += counter.tools(view.tools)
    if extra.schema is not None:
        total += counter.nested(extra.schema, "text.format")
    return total


def _as_message(item: Mapping[str, Any], i: int) -> tuple[Mapping[str, Any], bool]:
    """``as_message(item, "input[i]")``; a plain ``{"role": str, "content": str}`` dict is
    its own message already (as_message would build an equal one)."""
    if (
        type(item) is dict
        and len(item) == 2
        and type(item.get("role")) is str
        and type(item.get("content")) is str
    ):
        return item, False
    return as_message(item, f"input[{i}]")


def _item_tokens(counter: TokenCounter, items: Sequence[Mapping[str, Any]]) -> list[int]:
    return [counter.message(_as_message(item, i)[0]) for i, item in enumerate(items)]


def count_request_input(request: Mapping[str, Any]) -> int:
    """The input tokens of a Responses request (a JSON body or ``create`` kwargs), by the
    rules above, without the history the provider keeps."""
    adapter = ResponsesAdapter()
    view = adapter.read(request, refuse=False)
    return adapter.count(counter_for(view.model), view, view.messages)


# -- the adapter ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Extra:
    instructions: str | None = None
    schema: Any = None


_NO_EXTRA = _Extra()


@dataclass(frozen=True)
class ResponsesView(RequestView):
    """A :class:`RequestView` that also carries the instructions and the output schema."""

    extra: _Extra = _NO_EXTRA
    stored_prompt: bool = False
    """``prompt={"id": ...}``: content the provider adds, reserved as a ``file_id`` is."""


def _positive(kwargs: Mapping[str, Any], name: str) -> int | None:
    value = kwargs.get(name)
    if not given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive int, got {value!r}")
    return value


_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
"""Sampling parameters and the ranges the API documents (it rejects values outside)."""


def _reasons(model: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the call may bill reasoning tokens it never streams (as for chat: a reasoning
    model, or any model asked for a reasoning effort other than "none")."""
    reasoning = plain(kwargs.get("reasoning"))
    effort = reasoning.get("effort") if isinstance(reasoning, Mapping) else None
    return hidden_reasoning(model, {"reasoning_effort": effort} if given(effort) else {})


def _server_state(kwargs: Mapping[str, Any]) -> ServerState | None:
    # From extra_body too: an SDK release without the parameter sends it there.
    previous = from_body(kwargs, "previous_response_id")
    if given(previous):
        if not isinstance(previous, str) or not previous:
            raise InvalidRequestError(f"previous_response_id must be a string, got {previous!r}")
        return ServerState("response", previous)
    conversation = plain(from_body(kwargs, "conversation"))
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    if given(conversation):
        if not isinstance(conversation, str) or not conversation:
            raise InvalidRequestError(f"conversation must be an id, got {conversation!r}")
        return ServerState("conversation", conversation)
    return None


def _fees(tools: Sequence[Mapping[str, Any]], calls: int | None) -> tuple[int, int, int]:
    """(web searches, file searches, containers) a request's built-in tools allow."""
    each = calls if calls is not None else BUILTIN_TOOL_ASSUMED_CALLS
    web = file = containers = 0
    for tool in tools:
        kind = tool.get("type")
        fee = _FEE_TOOLS.get(kind) if isinstance(kind, str) else None
        if fee == "web":
            web = each
        elif fee == "file":
            file = each
        elif kind == "code_interpreter":
            container = plain(tool.get("container"))
            if not isinstance(container, str):  # {"type": "auto"}: a new container
                containers = 1
    return web, file, containers


def _unpriced_option(kwargs: Mapping[str, Any], tools: Sequence[Mapping[str, Any]]) -> str | None:
    """What the request asks for that the price data cannot price (refused under a money
    limit): the ``image_generation`` tool (each image is billed at the image model's rates,
    outside ``max_output_tokens``). A premium ``service_tier`` is the planner's to judge."""
    if any(tool.get("type") == "image_generation" for tool in tools):
        return "the image_generation tool"
    return None


def _stored_prompt(kwargs: Mapping[str, Any]) -> bool:
    """Whether the request uses a stored prompt (``prompt={"id": ...}``): its instructions
    and messages are added by the provider, unseen here."""
    prompt = plain(kwargs.get("prompt"))
    return given(prompt) and not (isinstance(prompt, Mapping) and not prompt)


def _opens_turn(item: Mapping[str, Any]) -> bool:
    return item.get("role") == "user" and item.get("type", "message") == "message"


def _pinned(item: Mapping[str, Any]) -> bool:
    return item.get("role") in ("system", "developer")


class ResponsesAdapter:
    """Reads and rewrites Responses API requests and responses. ``compact=True`` for
    ``responses.compact``, which takes no output bound (the model's whole output cap is
    reserved)."""

    provider = "openai"

    def __init__(self, *, compact: bool = False) -> None:
        self.compact = compact

    def read(self, kwargs: Mapping[str, Any], *, refuse: bool = True) -> ResponsesView:
        model = kwargs.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(f"model must be a non-empty str, got {model!r}")
        check_body(kwargs)
        stream = check_stream(kwargs)
        for name, (low, high) in _RANGES.items():
            if name in kwargs:  # an absent one is not sent
                check_number(kwargs, name, low, high)
        if refuse and from_body(kwargs, "background") is True:
            raise ConfigurationError(
                "background=True returns before the response exists and is billed later, "
                "when it completes: guardrail cannot settle it on this call, so it is "
                "refused; send it through client.unwrapped (unmetered) or without background"
            )
        state = _server_state(kwargs)
        raw_input = kwargs.get("input")
        if not given(raw_input) and state is None:
            raise InvalidRequestError("input is required (or previous_response_id)")
        items = _items(raw_input if given(raw_input) else None)
        instructions = kwargs.get("instructions")
        if given(instructions) and not isinstance(instructions, str):
            raise InvalidRequestError(f"instructions must be a string, got {_type(instructions)}")
        raw_tools: Any = kwargs.get("tools")
        if given(raw_tools) and not isinstance(raw_tools, list | tuple):
            raise InvalidRequestError(f"tools must be a list of tool dicts, got {_type(raw_tools)}")
        tools, opaque_tools = [], False
        for j, tool in enumerate(raw_tools if given(raw_tools) else ()):
            shaped, opaque = as_tool(tool, f"tools[{j}]")
            tools.append(shaped)
            opaque_tools = opaque_tools or opaque
        opaque_items = any(_as_message(item, i)[1] for i, item in enumerate(items))
        web, file, containers = _fees(tools, _positive(kwargs, "max_tool_calls"))
        hint = None
        for name in ("safety_identifier", "user"):
            if given(kwargs.get(name)):
                hint = kwargs[name]
                break
        return ResponsesView(
            model=model,
            messages=items,
            tools=tools or None,
            requested_output=_positive(kwargs, "max_output_tokens"),
            stream=stream,
            hidden_reasoning=_reasons(model, kwargs),
            tenant_hint=hint,
            reserved_searches=web,
            reserved_file_searches=file,
            reserved_containers=containers,
            server_state=state,
            count_exactly=opaque_items or opaque_tools,
            unpriced=_unpriced_option(kwargs, tools),
            stored_prompt=_stored_prompt(kwargs),
            output_bound_unsupported=self.compact,
            service_tier=requested_tier(kwargs),
            extra=_Extra(instructions if given(instructions) else None, output_schema(kwargs)),
        )

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int:
        return _fixed_tokens(counter, view) + sum(_item_tokens(counter, messages))

    def uncountable(self, view: RequestView, messages: Sequence[Any]) -> list[str]:
        """The parts guardrail cannot see, reserved as ``Policy.file_id_tokens`` says:
        ``input_file`` parts by ``file_id`` or URL (or whose pages cannot be read), and a
        stored prompt (``prompt={"id": ...}``), whose content the provider adds (nor does
        the provider's ``input_tokens`` count take it)."""
        stored = isinstance(view, ResponsesView) and view.stored_prompt
        shaped = [_as_message(item, i)[0] for i, item in enumerate(messages)]
        found = [  # input_file parts by file_id or URL, where the request has them
            place.replace("messages[", "input[", 1) for place in uncountable_parts(shaped)
        ]
        return [*found, "prompt (a stored prompt)"] if stored else found

    def fit(
        self,
        view: RequestView,
        messages: Sequence[Any],
        counter: TokenCounter,
        max_tokens: int,
        *,
        max_history_messages: int | None,
        summarizer: Summarizer | None,
        model_name: str,
    ) -> TrimResult:
        """The most recent whole turns of ``input`` that fit (a ``function_call`` stays
        with its output, leading developer/system items are kept)."""

        def summary(text: str | Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
            if isinstance(text, str):
                text = {
                    "role": "developer",
                    "content": f"Summary of the earlier conversation: {text}",
                }
            if not isinstance(text, Mapping) or "content" not in text:
                raise InvalidRequestError("summarizer must return a str or a message dict")
            return text, counter.message(as_message(text, "summary")[0])

        return fit_turns(
            messages,
            _item_tokens(counter, messages),
            opens_turn=_opens_turn,
            pinned=_pinned,
            fixed=_fixed_tokens(counter, view),
            max_tokens=max_tokens,
            max_history_messages=max_history_messages,
            summarizer=summarizer,
            summary_message=summary,
            model_name=model_name,
        )

    def rewrite(
        self,
        kwargs: Mapping[str, Any],
        *,
        model: str,
        messages: list[Mapping[str, Any]],
        max_output: int | None,
    ) -> tuple[dict[str, Any], bool]:
        new = dict(kwargs)
        new["model"] = model
        original = kwargs.get("input")
        if messages is not original and messages != _items(original if given(original) else None):
            new["input"] = messages  # trimmed
        if max_output is not None and not self.compact:
            new["max_output_tokens"] = max_output
        return new, False

    # -- responses and streams

    def usage(self, response: Any) -> TokenUsage | None:
        if not hasattr(response, "output") and hasattr(response, "parse"):
            response = parsed_raw(response)  # with_raw_response: the SDK caches the parse
        return _usage(
            getattr(response, "usage", None),
            getattr(response, "output", None),
            service_tier_of(response),
        )

    def request_id(self, response: Any) -> str | None:
        return request_id_of(response, "x-request-id") or getattr(response, "id", None)

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        kind = getattr(chunk, "type", None)
        if not isinstance(kind, str):
            return True
        if kind.endswith(".delta") and kind != "response.audio.delta":
            delta = getattr(chunk, "delta", None)
            if isinstance(delta, str):
                tally.add_text(delta)
        elif kind == "response.output_item.added":
            item = getattr(chunk, "item", None)
            tally.add_text(getattr(item, "name", None))
            _tally_fee(item, tally)
        elif kind == "response.created":
            tally.request_id = tally.request_id or getattr(chunk.response, "id", None)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = chunk.response
            tally.usage = _usage(
                getattr(response, "usage", None),
                getattr(response, "output", None),
                service_tier_of(response),
            )
            tally.final = response
        return True

    def state_keys(self, kwargs: Mapping[str, Any], response: Any) -> list[str]:
        """Where the context a settled response leaves is remembered: its id (when stored)
        and its conversation."""
        if getattr(response, "status", None) not in ("completed", "incomplete"):
            return []
        keys = []
        response_id = getattr(response, "id", None)
        if isinstance(response_id, str) and kwargs.get("store") is not False:
            keys.append(ServerState("response", response_id).key)
        conversation = _server_state({"conversation": from_body(kwargs, "conversation")})
        if conversation is not None:
            keys.append(conversation.key)
        return keys


def _tally_fee(item: Any, tally: StreamTally) -> None:
    """A fee-bearing output item a stream shows (charged if the stream ends before its
    usage, which lists them again)."""
    kind = getattr(item, "type", None)
    if kind == "web_search_call":
        tally.web_searches += 1
    elif kind == "file_search_call":
        tally.file_searches += 1
    elif kind == "code_interpreter_call":
        container = getattr(item, "container_id", None) or getattr(item, "id", None)
        tally.containers.add(str(container))


def _usage(usage: Any, output: Any, tier: str | None) -> TokenUsage | None:
    """A Responses ``usage`` (``input_tokens`` with cached ones inside, ``output_tokens``
    with reasoning inside), the fees its output items show, and the tier it was billed at
    (the response's ``service_tier``)."""
    if usage is None:
        return None
    input_details = (
        usage.get("input_tokens_details")
        if isinstance(usage, Mapping)
        else getattr(usage, "input_tokens_details", None)
    )
    output_details = (
        usage.get("output_tokens_details")
        if isinstance(usage, Mapping)
        else getattr(usage, "output_tokens_details", None)
    )
    kinds = [getattr(item, "type", None) for item in output or ()]
    containers = {
        getattr(item, "container_id", None)
        for item in output or ()
        if getattr(item, "type", None) == "code_interpreter_call"
    }
    return usage_of(  # an unreadable count is flagged for the engine, not read as 0
        usage_field(usage, "input_tokens"),
        usage_field(usage, "output_tokens"),
        cached_input_tokens=usage_field(input_details, "cached_tokens") or 0,
        reasoning_tokens=usage_field(output_details, "reasoning_tokens") or 0,
        web_searches=kinds.count("web_search_call"),
        file_searches=kinds.count("file_search_call"),
        containers=len(containers),
        service_tier=tier,
    )
