"""What differs between providers: the adapter a provider gives the engine.

An adapter is pure functions over one provider's requests and responses; the engine asks
it to read a request into a :class:`RequestView`, count it, rewrite it (model, trimmed
messages, output bound) and read usage back from responses and stream chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from guardrail._frozen import quick_init
from guardrail.catalog.pricing import TokenUsage
from guardrail.counting.messages import TokenCounter
from guardrail.engine.stream_tally import StreamTally
from guardrail.prompt.trimming import Summarizer, TrimResult

__all__ = ["FitsMessages", "PartialUsage", "ProviderAdapter", "RequestView", "ServerState"]


@dataclass(frozen=True)
class ServerState:
    """History the provider keeps for a request that refers to it (the Responses API's
    ``previous_response_id`` or ``conversation``): the request does not carry it, but it is
    billed as input, so it is reserved too, never as zero."""

    kind: Literal["response", "conversation"]
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class PartialUsage(TokenUsage):
    """A provider's usage with a count that could not be read (missing, null, negative,
    not a number, infinite): the readable fields as given, the unreadable side as 0 and
    flagged. The engine fills the flagged side in before pricing (never as 0): the input
    with its own count of the prompt (``Plan.prompt_held``), the output with the whole
    reserved output (a stream's with its local count of the output). Adapters return it
    from ``usage`` and put it in ``StreamTally.usage``; it never reaches a store."""

    input_unread: bool = False
    output_unread: bool = False


@quick_init
@dataclass(frozen=True)
class RequestView:
    model: str
    messages: list[Mapping[str, Any]]
    tools: list[Mapping[str, Any]] | None
    requested_output: int | None
    stream: bool
    tenant_hint: str | None
    choices: int = 1
    """``n``: every choice may produce the whole output, so the worst case multiplies."""
    output_required: bool = False
    """The API requires an output bound (Anthropic's ``max_tokens``): when the caller sets
    none, the reserved output is sent as the bound."""
    default_output_cap: int | None = None
    """When the caller sets no output bound, choose at most this many tokens (the
    Anthropic SDK refuses a non-streaming ``max_tokens`` that implies over 10 minutes)."""
    reserved_searches: int = 0
    """Server-side web searches the request allows (billed per search): reserved too."""
    server_passes: int = 0
    """Sampling passes the provider may add server-side after the first (Anthropic's
    server-tool loop: each reads the whole context again, with what the tools added, and
    bills it as input): each is reserved at the model's whole context window, on top of
    the prompt, and no count of the request replaces that."""
    hidden_reasoning: bool = False
    """The model reasons in tokens it bills as output but does not stream (OpenAI's
    o-series and gpt-5, Claude with ``thinking``): a call whose usage never arrives is
    settled at its whole reserved output, not at the visible tokens."""
    prompt_cache_write: Literal["5m", "1h"] | None = None
    """The request asks the provider to write its prompt cache (Anthropic ``cache_control``):
    those tokens are billed at the cache-write price, so the worst case prices the whole
    prompt at it (``"1h"`` writes cost more than ``"5m"``)."""
    reserved_file_searches: int = 0
    """File-search tool calls the request allows (billed per call): reserved too."""
    reserved_containers: int = 0
    """Code-interpreter containers the request may create (billed each): reserved too."""
    no_output: bool = False
    """The endpoint bills no output (embeddings): none is reserved, no bound is sent."""
    output_bound_unsupported: bool = False
    """The endpoint takes no output bound (the Responses API's ``compact``): the model's
    whole output cap is reserved, and nothing is sent."""
    max_prompt_tokens: int | None = None
    """The endpoint's own limit on one request's input (embeddings: summed over all inputs),
    in place of the model's window."""
    server_state: ServerState | None = None
    count_exactly: bool = False
    """The request holds parts guardrail cannot count locally (opaque items, built-in
    tools): ask the provider to count it (a ``CountTokens`` step), when it can."""
    unpriced: str | None = None
    """A request option billed at a price the price data does not know (audio, Claude's
    ``speed='fast'``...; a premium ``service_tier`` is judged by the planner, per model),
    named for the error: refused under a money limit
    (:class:`~guardrail.errors.UnpricedOption`); else sent, with an unknown cost, as for a
    model nothing prices."""
    unbounded_input: str | None = None
    """Input the request makes the provider read that guardrail can neither count nor bound
    (Anthropic's server-held ``thread``, ``mcp_servers``...), named for the error: refused
    under a token limit too (:class:`~guardrail.errors.UnboundedInput`), where ``unpriced``
    (which names it as well) is refused under a money limit only."""
    output_schema: Any = None
    """A structured-output JSON schema the model reads as prompt (Chat Completions'
    ``response_format``): counted with the prompt."""
    service_tier: str | None = None
    """The OpenAI processing tier the request asks for (``"auto"`` when it names none: the
    project's default tier, which ``Policy.assume_service_tier`` may say); reserved at that
    tier's prices. None for an API without tiers. Or a premium on the token prices
    (:mod:`guardrail.catalog.premiums`: Claude's US-only inference, a regional Vertex
    endpoint, or ``WORKSPACE_GEO``: a Claude request naming no geo, reserved as
    ``Policy.assume_inference_geo`` says)."""


class ProviderAdapter(Protocol):
    """Reads and rewrites one provider's requests and responses. Pure functions only.

    Optional: an adapter with ``exact_count = True`` has the flow ask the provider for its
    own count of the prompt (a :class:`CountTokens` operation) before sending; one with a
    ``state_keys(kwargs, response)`` method names the server-side state a settled response
    leaves (the flow remembers its tokens for the next call that continues it); one with a
    ``fit`` method (:class:`FitsMessages`) trims its provider's conversations itself; one
    with ``uncountable(view, messages)`` returns where the parts are that it cannot bound
    (documents by ``file_id``), which the planner reserves as ``Policy.file_id_tokens``
    says (``exact_count_covers_uncountable = True``: the provider's count reads them, and
    replaces that bound when it answers).
    """

    provider: str

    def read(self, kwargs: Mapping[str, Any]) -> RequestView: ...

    def count(self, counter: TokenCounter, view: RequestView, messages: Sequence[Any]) -> int: ...

    def rewrite(
        self,
        kwargs: Mapping[str, Any],
        *,
        model: str,
        messages: list[Mapping[str, Any]],
        max_output: int | None,
    ) -> tuple[dict[str, Any], bool]:
        """New kwargs, and whether the caller will not expect a usage-only stream chunk."""
        ...

    def usage(self, response: Any) -> TokenUsage | None: ...

    def request_id(self, response: Any) -> str | None: ...

    def observe_chunk(self, chunk: Any, tally: StreamTally) -> bool:
        """Record a stream chunk's text and usage; False hides it from the caller."""
        ...


@runtime_checkable
class FitsMessages(Protocol):
    """An adapter whose provider shapes a conversation differently from Chat Completions
    (Anthropic: the system prompt outside ``messages``, tool results inside user messages)
    trims it itself; the others get :func:`guardrail.prompt.trimming.fit_messages`."""

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
    ) -> TrimResult: ...
