"""What a stream has produced so far, counted as it arrives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.messages import TokenCounter

__all__ = ["StreamTally"]


@dataclass
class StreamTally:
    """What a stream has produced so far; settles the call if the provider's usage never
    arrives (early close, dropped connection)."""

    counter: TokenCounter
    reserved_output: int
    hide_usage_chunk: bool
    margin: float = 1.0
    """For a model without a local tokenizer, ``counter`` is a stand-in encoding and the
    stream's count is multiplied by this once (not per chunk, where rounding up would
    double a one-token delta)."""
    texts: list[str] = field(default_factory=list)
    raw_tokens: int = 0
    output_tokens: int = 0
    usage: TokenUsage | None = None
    """The provider's final usage, once it arrived."""
    input_usage: TokenUsage | None = None
    """The provider's usage from the start of the stream (Anthropic's ``message_start``:
    the prompt, cache reads and writes), for a stream that ends before its final usage."""
    request_id: str | None = None
    overrun: bool = False
    first_chunk_at: float | None = None
    """When the first chunk arrived (``time.monotonic()``), for time to first chunk."""
    response_model: str | None = None
    """The model the chunks say answered, when they say so."""
    service_tier: str | None = None
    """The tier the chunks say the call is processed (and billed) at, when they say so: a
    stream that ends before its usage is settled at it."""
    unread: bool = False
    """The chunks went past the guard unread (a raw response read as bytes): the output
    is settled at the whole reservation."""
    final: Any = None
    """The provider's final object, when a stream ends with one (the Responses API's
    ``response.completed`` carries the whole response)."""
    web_searches: int = 0
    file_searches: int = 0
    containers: set[str] = field(default_factory=set)
    """Fee-bearing tool calls the stream showed (web and file searches, code-interpreter
    containers by id): a stream that ends before its usage is charged them."""
    server_passes: int = 0
    """Server tool uses the stream showed (Anthropic's ``server_tool_use`` blocks): each
    makes the provider sample again, billing its whole context as input once more."""

    def add_text(self, text: object) -> None:
        """Count a piece of output (anything but a str, malformed, is not text)."""
        if text and isinstance(text, str):
            self.texts.append(text)
            self.raw_tokens += self.counter.text(text)
            if self.margin == 1.0:
                self.output_tokens = self.raw_tokens
            else:
                self.output_tokens = math.ceil(self.raw_tokens * self.margin)
            # An estimate may run past the reservation by its margin without the provider
            # having ignored the bound: only a count past that is an overrun.
            if self.raw_tokens > self.reserved_output * self.margin:
                self.overrun = True
