"""The fake OpenAI server's Responses API: ``POST /v1/responses`` (JSON, or server-sent
events with ``"stream": true``), ``POST /v1/responses/input_tokens`` and
``POST /v1/responses/compact``.

The server keeps what a stored response left in its context (its input, history included,
plus its output) per response id, and per conversation id, so that a request with
``previous_response_id`` or ``conversation`` is billed for the history the request itself
does not carry, as the real API bills it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from guardrail.testing.http import Script, dumps
from guardrail.testing.openai_wire import Completion

if TYPE_CHECKING:
    from guardrail.testing.openai_handler import OpenAIHandler

__all__ = [
    "ResponseFailedScript",
    "answer_compact",
    "answer_input_tokens",
    "answer_responses",
    "default_response_input_tokens",
]

COMPACTION_SUMMARY: Final = "Summary of the conversation so far."


@dataclass(frozen=True)
class ResponseFailedScript:
    """Answer the next Responses request with ``status: "failed"`` (a ``response.failed``
    event when streamed): the input is billed, no output."""

    code: str = "server_error"
    message: str = "The model failed to generate a response."


def default_response_input_tokens(request: dict[str, Any]) -> int:
    """The input of a Responses request as guardrail counts it (imported lazily)."""
    from guardrail.providers.openai.responses import count_request_input

    return int(count_request_input(request))


def _checked(h: OpenAIHandler, request: Any) -> str | None:
    """The request's model, or None once a 400 has been sent."""
    if not isinstance(request, dict):
        h._bad_request("The request body must be a JSON object.")
        return None
    model = request.get("model")
    if not isinstance(model, str) or not model:
        h._bad_request("you must provide a model parameter", "model")
        return None
    if "input" not in request and "previous_response_id" not in request:
        h._bad_request("Missing required parameter: 'input'.", "input")
        return None
    return model


def _history(h: OpenAIHandler, request: dict[str, Any]) -> int | None:
    """Tokens of the server-side history the request refers to (None: 400 sent)."""
    fake = h.server.fake
    previous = request.get("previous_response_id")
    if previous is not None:
        found = fake._contexts.get(str(previous))
        if found is None:
            h._bad_request(
                f"Previous response with id '{previous}' not found.", "previous_response_id"
            )
            return None
        return found
    conversation = _conversation_id(request)
    return 0 if conversation is None else fake._conversations.get(conversation, 0)


def _remember(h: OpenAIHandler, request: dict[str, Any], response_id: str, context: int) -> None:
    fake = h.server.fake
    with fake._lock:
        if request.get("store", True) is not False:
            fake._contexts[response_id] = context
        conversation = _conversation_id(request)
        if conversation is not None:
            fake._conversations[conversation] = context


# -- POST /v1/responses


def answer_responses(h: OpenAIHandler, request: Any, script: Script | None) -> None:
    if isinstance(script, ResponseFailedScript):
        failed, script = script, None
    else:
        failed = None
    answered, cut_after = h._apply(script)
    if answered:
        return
    model = _checked(h, request)
    if model is None:
        return
    if request.get("background") is True:
        h._bad_request("background responses are not supported by the fake", "background")
        return
    limit = request.get("max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 16):
        h._bad_request(
            f"Invalid 'max_output_tokens': expected an integer of at least 16, got {limit!r}.",
            "max_output_tokens",
        )
        return
    history = _history(h, request)
    if history is None:
        return
    fake = h.server.fake
    completion = fake._complete(request, model, limit, 1, endpoint="responses")
    response = _response(fake._next_id("resp_fake_"), request, completion, history, failed)
    response["service_tier"] = fake._billed_tier(request)
    if response["status"] != "failed":
        usage = response["usage"]
        _remember(h, request, response["id"], usage["input_tokens"] + usage["output_tokens"])
    if request.get("stream") is True:
        _stream(h, response, completion, cut_after)
    elif cut_after is not None:
        h._send_cut_json(response)
    else:
        h._send_json(200, response)


def _stream(
    h: OpenAIHandler, response: dict[str, Any], completion: Completion, cut_after: int | None
) -> None:
    events = _events(response, completion)
    h._start_event_stream()
    for sent, event in enumerate(events):
        if cut_after is not None and sent >= cut_after:
            h.close_connection = True  # no terminal event: an abrupt EOF
            return
        kind = event["type"].encode("ascii")
        h._write_chunk(b"event: " + kind + b"\ndata: " + dumps(event) + b"\n\n")
    h._end_chunks()


# -- POST /v1/responses/input_tokens (free)


def answer_input_tokens(h: OpenAIHandler, request: Any) -> None:
    if _checked(h, request) is None:
        return
    history = _history(h, request)
    if history is None:
        return
    prompt = h.server.fake._prompt_tokens_for(request, "responses")
    h._send_json(200, {"object": "response.input_tokens", "input_tokens": prompt + history})


# -- POST /v1/responses/compact (paid)


def answer_compact(h: OpenAIHandler, request: Any, script: Script | None) -> None:
    answered, cut_after = h._apply(script)
    if answered:
        return
    model = _checked(h, request)
    if model is None:
        return
    history = _history(h, request)
    if history is None:
        return
    fake = h.server.fake
    prompt = fake._prompt_tokens_for(request, "responses") + history
    output = len(fake._encode_for(COMPACTION_SUMMARY, model))
    payload = {
        "id": fake._next_id("cmp_fake_"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [
            {
                "type": "compaction",
                "id": fake._next_id("cmpitem_fake_"),
                "encrypted_content": "ZmFrZSBjb21wYWN0aW9u",
            }
        ],
        "usage": _usage(prompt, fake.cached_tokens, output, 0),
    }
    if cut_after is not None:
        h._send_cut_json(payload)
    else:
        h._send_json(200, payload)


def _conversation_id(request: dict[str, Any]) -> str | None:
    conversation = request.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return conversation if isinstance(conversation, str) and conversation else None


def _usage(input_tokens: int, cached: int, output: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": min(cached, input_tokens),
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output,
    }


def _output_items(completion: Completion, response_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if completion.reasoning_tokens:
        items.append(
            {"type": "reasoning", "id": f"rs_{response_id}", "summary": [], "status": "completed"}
        )
    for call, call_id in zip(completion.tool_calls, completion.call_ids, strict=True):
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{call_id}",
                "call_id": call_id,
                "name": call.name,
                "arguments": call.arguments_json,
                "status": "completed",
            }
        )
    if not completion.tool_calls:
        items.append(
            {
                "type": "message",
                "id": f"msg_{response_id}",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {
                        "type": "output_text",
                        "text": completion.content,
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            }
        )
    return items


def _response(
    response_id: str,
    request: dict[str, Any],
    completion: Completion,
    history: int,
    failed: ResponseFailedScript | None,
) -> dict[str, Any]:
    status, incomplete, error = "completed", None, None
    output_tokens, reasoning = completion.output_tokens, completion.reasoning_tokens
    if failed is not None:
        status, error = "failed", {"code": failed.code, "message": failed.message}
        output_tokens = reasoning = 0
    elif completion.finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    input_tokens = completion.prompt_tokens + history
    cached = completion.usage["prompt_tokens_details"]["cached_tokens"]
    return {
        "id": response_id,
        "object": "response",
        "created_at": completion.created,
        "status": status,
        "model": completion.model,
        "output": [] if failed is not None else _output_items(completion, response_id),
        "parallel_tool_calls": True,
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "instructions": request.get("instructions"),
        # Echoed like the real API's: langchain reads a stream's structured output from it.
        "text": request.get("text") or {"format": {"type": "text"}},
        "max_output_tokens": request.get("max_output_tokens"),
        "previous_response_id": request.get("previous_response_id"),
        "store": request.get("store", True),
        "usage": _usage(input_tokens, cached, output_tokens, reasoning),
        "error": error,
        "incomplete_details": incomplete,
    }


def _events(response: dict[str, Any], completion: Completion) -> list[dict[str, Any]]:
    """The SSE events of a response, in the order the SDK's stream state requires
    (``response.created`` first, a content part before its text deltas, one terminal
    event carrying the whole response with its usage)."""
    shell = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell},
        {"type": "response.in_progress", "response": shell},
    ]
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "content": []},
                }
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append({"type": "response.content_part.added", **where, "part": part})
            for piece in completion.pieces:
                events.append(
                    {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
                )
            text = item["content"][0]["text"]
            events.append(
                {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
            )
            events.append(
                {"type": "response.content_part.done", **where, "part": {**part, "text": text}}
            )
        elif item["type"] == "function_call":
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "arguments": "", "status": "in_progress"},
                }
            )
            where = {"item_id": item["id"], "output_index": index}
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    **where,
                    "delta": item["arguments"],
                }
            )
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
            )
        else:
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": item}
            )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete"}
    events.append(
        {"type": terminal.get(response["status"], "response.failed"), "response": response}
    )
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]
