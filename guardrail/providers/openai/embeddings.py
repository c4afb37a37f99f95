"""The embeddings adapter: ``embeddings.create`` counted, reserved and settled at the
embedding price.

An embedding request is billed for its input tokens only: each string by the model's
encoding (no message overhead), each token array by its length. The API takes at most
:data:`MAX_TOKENS_PER_INPUT` tokens per input (the catalog's ``max_input_tokens`` of the
model, when it has one) and :data:`MAX_TOKENS_PER_REQUEST` summed over
one request (OpenAI's embeddings guide); a request over either is refused before it is
sent, as the API would refuse it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from guardrail.catalog.models import model_info
from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.messages import TokenCounter
from guardrail.engine.adapter import RequestView
from guardrail.engine.drivers import parsed_raw
from guardrail.engine.request_check import check_body, check_json, check_texts
from guardrail.engine.stream_tally import StreamTally
from guardrail.errors import ContextWindowExceeded, InvalidRequestError
from guardrail.providers.common import given, request_id_of, usage_field, usage_of

__all__ = ["MAX_TOKENS_PER_INPUT", "MAX_TOKENS_PER_REQUEST", "EmbeddingsAdapter"]

MAX_TOKENS_PER_INPUT = 8_191
MAX_TOKENS_PER_REQUEST = 300_000


def _inputs(value: Any) -> list[str | list[int]]:
    """``input`` as a list of strings and token arrays, checked (each string valid UTF-8:
    the SDK and the gateway send it as such)."""
    if isinstance(value, str):
        check_json(value, "input")
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes) or not value:
        raise InvalidRequestError(
            "input must be a string, a list of strings, a token array or a list of token "
            f"arrays, got {type(value).__name__}"
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [list(value)]
    items: list[str | list[int]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            items.append(item)
        elif isinstance(item, Sequence) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        ):
            items.append(list(item))
        else:
            raise InvalidRequestError(
                f"input[{i}] must be a string or a token array, got {type(item).__name__}"
            )
    texts = [item for item in items if type(item) is str]
    if len(texts) == len(items):
        check_texts(texts, "input")
    elif texts:  # strings and token arrays mixed: name each string by its own index
        for i, item in enumerate(items):
            if isinstance(item, str):
                check_json(item, f"input[{i}]")
    return items


class EmbeddingsAdapter:
    """Reads ``embeddings.create`` requests and their usage."""

    provider = "openai"
    operation = "embeddings"  # gen_ai.operation.name (metrics and spans)

    def read(self, kwargs: Mapping[str, Any]) -> RequestView:
        model = kwargs.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(f"model must be a non-empty str, got {model!r}")
        check_body(kwargs, skip="input")
        raw = kwargs.get("input")
        if not isinstance(raw, str | Sequence) and isinstance(raw, Iterable):
            raw = list(raw)
        items = _inputs(raw)
        user = kwargs.get("user")
        return RequestView(
            model=model,
            messages=[{"input": item} for item in items],
            tools=None,
            requested_output=None,
            stream=False,
            tenant_hint=user if given(user) else None,
            no_output=True,
            max_prompt_tokens=MAX_TOKENS_PER_REQUEST,
        )

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int:
        limit = model_info(view.model).max_input_tokens or MAX_TOKENS_PER_INPUT  # the catalog's
        total = 0
        for i, message in enumerate(messages):
            item = message["input"]
            tokens = len(item) if isinstance(item, list) else counter.text(item)
            if tokens > limit:
                raise ContextWindowExceeded(
                    model=view.model,
                    prompt_tokens=tokens,
                    reserved_output_tokens=0,
                    limit=limit,
                    limit_name=f"the input limit of one embedding (input[{i}])",
                    detail="split the text; nothing was sent",
                )
            total += tokens
        return total

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
        if not isinstance(kwargs.get("input"), str | Sequence):
            new["input"] = [m["input"] for m in messages]  # a one-shot iterable, read once
        return new, False

    def usage(self, response: Any) -> TokenUsage | None:
        if not hasattr(response, "data") and hasattr(response, "parse"):
            response = parsed_raw(response)
        usage = getattr(response, "usage", None)
        if usage is None:
            return None
        # No output is billed; an unreadable prompt count is flagged for the engine's own.
        return usage_of(usage_field(usage, "prompt_tokens"), 0)

    def request_id(self, response: Any) -> str | None:
        return request_id_of(response, "x-request-id")

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:  # pragma: no cover
        return True  # embeddings do not stream
