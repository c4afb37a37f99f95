"""What a Messages request may make Anthropic bill beyond what it carries, and what of it
guardrail can bound.

* **Body fields.** ``client.beta.messages`` is refused, but the beta namespace is only
  SDK sugar: the same ``POST /v1/messages`` with the ``anthropic-beta`` header reaches the
  API through ``messages.create(extra_body=..., extra_headers=...)``, and some beta fields
  bill what the request does not show (a server-held ``thread``, ``mcp_servers``,
  ``fallbacks`` to dearer models, compaction by ``context_management``). So a field is
  metered only when guardrail knows it: the parameters of the installed SDK's
  ``messages.create`` (read from its own param TypedDicts, so this follows SDK releases),
  and :data:`KNOWN_FIELDS`; never the :data:`STATEFUL_FIELDS`, whatever the SDK says of
  them. Any other field (a beta-only one, or one no SDK knows) is named by
  :func:`unmetered_field` and refused under a money limit with ``UnpricedOption``.
* **Tools.** Custom tools and the Anthropic-defined client tools (bash, text editor,
  memory, computer) cost only the tokens guardrail counts. Of the server tools, web search
  and web fetch and tool search are bounded (:func:`server_passes`); any other tool type
  (code execution, billed by container time; the advisor, billed at its own model; MCP
  toolsets; a newer type) is named by :func:`refused_tool`.
* **The server-side tool loop.** A server tool runs inside the request: its result (a
  fetched page or PDF, search results, loaded tool definitions) is added to the context
  and the model samples again, and every sampling pass bills its whole context as input
  (``usage.iterations`` reports the passes; the top-level usage is their sum). Nothing
  bounds what a fetch or a search adds (``max_content_tokens`` is approximate and does not
  apply to PDFs), so each further pass is reserved at the whole context window. There are
  at most as many further passes as the server tools allow uses (``max_uses``), and never
  more than the loop's own limit, :data:`SERVER_LOOP_PASSES` (then the API answers
  ``pause_turn``): set ``max_uses`` to hold less.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from guardrail.providers.anthropic.usage import field
from guardrail.providers.common import given

__all__ = [
    "BILLING_FIELDS",
    "KNOWN_FIELDS",
    "SERVER_LOOP_PASSES",
    "STATEFUL_FIELDS",
    "WEB_SEARCH_ASSUMED_USES",
    "allowed_searches",
    "refused_tool",
    "server_passes",
    "unmetered_field",
]

WEB_SEARCH_ASSUMED_USES = 10
"""Searches reserved for a web-search server tool without ``max_uses`` (an assumption:
set ``max_uses`` to make the bound exact). Actual searches are settled at their price."""

SERVER_LOOP_PASSES = 10
"""The most sampling passes Anthropic's server-side tool loop makes in one request (its
iteration limit, 10 by default; past it the response stops with ``pause_turn``), taken as
the most further passes after the first (erring high by one): the bound for server tools
without ``max_uses``, and for all of them together."""

STATEFUL_FIELDS: Mapping[str, str] = {
    "thread": "a server-held thread: history billed as input that the request does not carry",
    "mcp_servers": "MCP servers: their tool lists and results are billed as input",
    "fallbacks": "fallback models, each with its own price, max_tokens and speed",
    "fallback_credit_token": "fallback credits",
    "context_management": "server-side compaction and context edits, billed outside the "
    "top-level usage",
    "compaction": "server-side compaction, billed outside the top-level usage",
    "billing_policy": "a billing option",
}
"""Fields that carry server-held state or billing guardrail cannot bound: never metered,
even by an SDK release that makes them parameters of ``messages.create``."""

BILLING_FIELDS = frozenset(("billing_policy", "fallback_credit_token"))
"""Of :data:`STATEFUL_FIELDS`, those that change what a call is charged, not the tokens it
bills: refused under a money limit only (the others under a token limit too)."""

KNOWN_FIELDS = frozenset(
    (
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "cache_control",
        "service_tier",
        "speed",  # refused under a money limit when unpriced (the adapter's _unpriced_option)
        "inference_geo",  # likewise, unless "global"
        "output_config",
        "output_format",  # messages.parse / stream: the SDK's form of output_config.format
        "container",
        "diagnostics",
        "user_profile_id",
        "workspace_id",
    )
)
"""Fields guardrail reads or knows to bill only the tokens it counts, whichever SDK release
is installed (older ones take some only in ``extra_body``; a gateway takes JSON)."""

_TRANSPORT = frozenset(("extra_body", "extra_headers", "extra_query", "timeout"))
_PARAM_CLASSES = (
    "MessageCreateParamsBase",
    "MessageCreateParamsNonStreaming",
    "MessageCreateParamsStreaming",
)


@functools.cache
def _sdk_fields() -> tuple[frozenset[str], frozenset[str]]:
    """(the fields of ``messages.create``, those of ``beta.messages.create``) in the
    installed SDK's param TypedDicts; empty without the SDK (the gateway)."""
    try:
        from anthropic.types import message_create_params as ga
        from anthropic.types.beta import message_create_params as beta
    except ImportError:
        return frozenset(), frozenset()

    def fields(module: Any) -> frozenset[str]:
        found: set[str] = set()
        for name in _PARAM_CLASSES:
            found.update(getattr(getattr(module, name, None), "__annotations__", {}))
        return frozenset(found)

    return fields(ga), fields(beta)


@functools.cache
def _metered() -> frozenset[str]:
    general, _ = _sdk_fields()
    return (KNOWN_FIELDS | general | _TRANSPORT) - STATEFUL_FIELDS.keys()


def unmetered_field(kwargs: Mapping[str, Any], *, tokens: bool = False) -> str | None:
    """The first field of the request (as sent: ``extra_body`` merged in) that guardrail
    does not meter, named for ``UnpricedOption``; None when there is none. ``tokens``: only
    a field that may bill tokens guardrail cannot count (not :data:`BILLING_FIELDS`)."""
    extra = kwargs.keys() - _metered()
    for name in sorted(extra):
        if not given(kwargs[name]) or (tokens and name in BILLING_FIELDS):
            continue  # None or NOT_GIVEN: nothing is asked
        why = STATEFUL_FIELDS.get(name)
        if why is None:
            beta = name in _sdk_fields()[1]
            why = (
                "a beta Messages field guardrail does not meter"
                if beta
                else "a request field guardrail does not know"
            )
        return f"the request field {name!r} ({why})"
    return None


_CLIENT_TOOLS = ("bash_2", "text_editor_2", "memory_2", "computer_2")
"""Anthropic-defined tools the caller's code runs: only their tokens are billed."""
_SERVER_TOOLS = ("web_search_", "web_fetch_", "tool_search_tool_")
"""Server tools whose loop guardrail bounds (:func:`server_passes`)."""


def _kind(tool: Any) -> str:
    kind = field(tool, "type")
    return kind if isinstance(kind, str) else "custom"


def refused_tool(tools: Sequence[Any] | None) -> str | None:
    """The first tool whose cost guardrail cannot bound or price, named for
    ``UnpricedOption``; None when every tool is custom, a client tool or a bounded
    server tool."""
    for tool in tools or ():
        kind = _kind(tool)
        if kind == "custom" or kind.startswith(_CLIENT_TOOLS + _SERVER_TOOLS):
            continue
        if kind.startswith("code_execution_"):
            why = "billed by container time, which guardrail does not price"
        else:
            why = "a tool type guardrail cannot bound or price"
        return f"the {kind!r} tool ({why})"
    return None


def _uses(tool: Any) -> int | None:
    uses = field(tool, "max_uses")
    ok = isinstance(uses, int) and not isinstance(uses, bool) and uses >= 0
    return uses if ok else None


def allowed_searches(tools: Sequence[Any] | None) -> int:
    """Web searches a request's server tools allow: their ``max_uses``, or the assumption."""
    total = 0
    for tool in tools or ():
        if _kind(tool).startswith("web_search"):
            uses = _uses(tool)
            total += WEB_SEARCH_ASSUMED_USES if uses is None else uses
    return total


def server_passes(tools: Sequence[Any] | None) -> int:
    """Sampling passes the server-side tool loop may add after the first: one per use its
    server tools allow (``max_uses``; a tool without it, as many as the loop makes), at
    most :data:`SERVER_LOOP_PASSES`."""
    total = 0
    for tool in tools or ():
        if _kind(tool).startswith(_SERVER_TOOLS):
            uses = _uses(tool)
            total += SERVER_LOOP_PASSES if uses is None else uses
    return min(total, SERVER_LOOP_PASSES)
