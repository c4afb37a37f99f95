"""Guarded ``OpenAI`` / ``AsyncOpenAI`` clients: real SDK clients whose paid calls go
through the guard.

``guard.wrap(client)`` returns a copy of ``client`` whose class is a subclass of its own
(``isinstance(guarded, openai.OpenAI)`` holds; ``AzureOpenAI`` stays an ``AzureOpenAI``), in
which (see :mod:`guardrail.providers.sdk_classes`):

* ``chat.completions.create`` / ``parse`` (and ``beta.chat.completions``), ``responses.create``
  / ``parse`` / ``compact`` and ``embeddings.create`` are guarded: counted, fitted, reserved,
  sent with guardrail's one retry policy (the SDK's own retries off for them), settled. The
  SDK's ``stream()`` helpers and ``with_raw_response`` / ``with_streaming_response`` views
  are built on these methods, so they are guarded too.
* the paid endpoints guardrail cannot meter (:data:`UNMETERED`: images, audio, batches,
  fine-tuning, legacy completions, Assistants runs, realtime sessions, ...) are refused for
  a tenant with a money limit unless ``Guard(unmetered="allow")``, and logged once per
  process when they pass;
* everything else (models, files, stored responses, conversations, ...) is free and is the
  SDK's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from guardrail.engine.request_check import from_body
from guardrail.providers.clients import (
    ClientState,
    Endpoint,
    guarded,
    guarded_client_class,
    unmetered_tree,
    wrap_client,
)
from guardrail.providers.common import given, parameters_of
from guardrail.providers.openai.chat import OpenAIAdapter, materialise
from guardrail.providers.openai.embeddings import EmbeddingsAdapter
from guardrail.providers.openai.responses import ResponsesAdapter, materialise_input
from guardrail.providers.raw_requests import FreeWrites
from guardrail.providers.sdk_classes import Node

if TYPE_CHECKING:
    from guardrail.guard import Guard

__all__ = ["FREE_WRITES", "OPENAI_TREE", "UNMETERED", "guarded_openai_class", "wrap_openai"]

COUNT_KEYS = (
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "previous_response_id",
    "conversation",
    "reasoning",
    "text",
    "truncation",
)
"""What ``POST /v1/responses/input_tokens`` takes of a ``responses.create`` call."""
COUNT_TIMEOUT_SECONDS = 10.0
"""The count's own deadline when the call sets none."""


def _count_params(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """The body of the count: the call's fields (from extra_body too, where an older SDK
    release sends one it has no parameter for)."""
    params = {k: v for k in COUNT_KEYS if given(v := from_body(kwargs, k))}
    timeout = kwargs.get("timeout")
    return params, (timeout if given(timeout) else COUNT_TIMEOUT_SECONDS)


def _as_arguments(counter: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as the SDK's count method takes them: what it has no parameter for goes
    in its extra_body."""
    known = parameters_of(counter)
    if known is None:
        return params
    extra = {k: v for k, v in params.items() if k not in known}
    kept = {k: v for k, v in params.items() if k in known}
    return {**kept, "extra_body": extra} if extra else kept


def _input_tokens(result: Any) -> int:
    value: Any = result.get("input_tokens") if isinstance(result, Mapping) else result.input_tokens
    return int(value)


def _counter(state: ClientState, client: Any) -> Callable[[dict[str, Any]], int]:
    """``responses.input_tokens.count`` (free); older SDKs without it post the same body."""

    def count(kwargs: dict[str, Any]) -> int:
        params, timeout = _count_params(kwargs)
        counter = getattr(getattr(client.responses, "input_tokens", None), "count", None)
        if counter is not None:
            return _input_tokens(counter(**_as_arguments(counter, params), timeout=timeout))
        options = {"timeout": timeout}
        return _input_tokens(
            client.post("/responses/input_tokens", body=params, cast_to=object, options=options)
        )

    return count


def _acounter(state: ClientState, client: Any) -> Callable[[dict[str, Any]], Any]:
    async def count(kwargs: dict[str, Any]) -> int:
        params, timeout = _count_params(kwargs)
        counter = getattr(getattr(client.responses, "input_tokens", None), "count", None)
        if counter is not None:
            return _input_tokens(await counter(**_as_arguments(counter, params), timeout=timeout))
        options = {"timeout": timeout}
        return _input_tokens(
            await client.post(
                "/responses/input_tokens", body=params, cast_to=object, options=options
            )
        )

    return count


def azure_deployment(client: Any) -> str | None:
    """The deployment an ``AzureOpenAI`` client was made for: Azure sends every call there
    and bills that deployment whatever the body's ``model`` says, so it is the model
    priced (a name the catalog does not know is priced by ``register_model``). Read from
    the client's URL too: the SDK's ``copy`` keeps the deployment only there."""
    deployment = getattr(client, "_azure_deployment", None)
    if isinstance(deployment, str) and deployment:
        return deployment
    if getattr(client, "_api_version", None) is None:  # not an Azure client
        return None
    path = str(vars(client).get("_base_url", "")).rstrip("/")
    head, _, name = path.rpartition("/")
    return name or None if head.endswith("/deployments") else None


CHAT = Endpoint(adapter=OpenAIAdapter(), prepare=materialise, billed_model=azure_deployment)
RESPONSES = Endpoint(
    adapter=ResponsesAdapter(),
    prepare=materialise_input,
    count=_counter,
    acount=_acounter,
    billed_model=azure_deployment,
)
COMPACT = Endpoint(
    adapter=ResponsesAdapter(compact=True),
    prepare=materialise_input,
    count=_counter,
    acount=_acounter,
    billed_model=azure_deployment,
)
EMBEDDINGS = Endpoint(adapter=EmbeddingsAdapter(), billed_model=azure_deployment)

UNMETERED: dict[str, tuple[str, ...]] = {
    "images": ("generate", "edit", "create_variation"),
    "audio.speech": ("create",),
    "audio.transcriptions": ("create",),
    "audio.translations": ("create",),
    "completions": ("create",),
    "batches": ("create",),
    "fine_tuning.jobs": ("create",),
    "beta.threads": ("create_and_run", "create_and_run_poll", "create_and_run_stream"),
    "beta.threads.runs": (
        "create",
        "create_and_poll",
        "create_and_stream",
        "stream",
        "submit_tool_outputs",
        "submit_tool_outputs_and_poll",
        "submit_tool_outputs_stream",
    ),
    "beta.responses": ("create", "stream", "parse", "compact", "connect"),
    "beta.realtime": ("connect",),
    "beta.realtime.sessions": ("create",),
    "beta.realtime.transcription_sessions": ("create",),
    "realtime": ("connect",),
    "realtime.translations": ("connect",),
    "realtime.client_secrets": ("create",),
    "responses": ("connect",),
    "containers": ("create",),
    "videos": ("create", "create_and_poll", "remix", "edit", "extend"),
    "evals.runs": ("create",),
    "live": ("create", "connect"),
    "live.forks": ("connect",),
    "live.sideband": ("connect",),
    "decisions": ("create",),
}
"""Paid endpoints guardrail cannot meter (resource path: methods); see the README table."""

FREE_WRITES = FreeWrites(
    (
        "/files",
        "/uploads",
        "/uploads/*/cancel",
        "/uploads/*/complete",
        "/uploads/*/parts",
        "/vector_stores",
        "/vector_stores/*",
        "/vector_stores/*/files",
        "/vector_stores/*/files/*",
        "/vector_stores/*/file_batches",
        "/vector_stores/*/file_batches/*/cancel",
        "/vector_stores/*/search",
        "/conversations",
        "/conversations/*",
        "/conversations/*/items",
        "/moderations",
        "/responses/input_tokens",
        "/responses/*/cancel",
        "/chat/completions/*",  # a stored completion's metadata
        "/batches/*/cancel",
        "/fine_tuning/jobs/*/cancel",
        "/fine_tuning/jobs/*/pause",
        "/fine_tuning/checkpoints/*/permissions",
        "/fine_tuning/alpha/graders/validate",
        "/evals",
        "/evals/*",
        "/evals/*/runs/*/cancel",
        "/assistants",
        "/assistants/*",
        "/threads",
        "/threads/*",
        "/threads/*/messages",
        "/threads/*/messages/*",
        "/threads/*/runs/*",  # a run's metadata
        "/threads/*/runs/*/cancel",
        "/containers/*/files",
        "/realtime/calls/*/hangup",
        "/realtime/calls/*/reject",
        "/realtime/calls/*/refer",
        "/live/sessions/*/hangup",
        "/live/sessions/*/reject",
        "/live/sessions/*/refer",
        "/chatkit/sessions/*/cancel",
        "/webhook_endpoints/**",
        "/organization/**",
        "/projects/**",
        "/skills/**",
        "/vaults/**",
    ),
    paid=("/threads/runs",),
)
"""The writes OpenAI does not bill (:mod:`guardrail.providers.raw_requests`): any other
write reaching the guarded client itself (``client.post(...)``, an endpoint newer than this
list) is refused while a limit applies."""

OPENAI_TREE: Node = unmetered_tree(
    UNMETERED,
    {
        "chat.completions": {"create": guarded(CHAT), "parse": guarded(CHAT)},
        "beta.chat.completions": {"create": guarded(CHAT), "parse": guarded(CHAT)},
        "responses": {
            "create": guarded(RESPONSES),
            "parse": guarded(RESPONSES),
            "compact": guarded(COMPACT),
        },
        "embeddings": {"create": guarded(EMBEDDINGS)},
    },
)


def guarded_openai_class(base: type) -> type:
    """The guarded subclass of an OpenAI SDK client class (``openai.OpenAI``,
    ``openai.AsyncOpenAI``, ``openai.AzureOpenAI``...)."""
    return guarded_client_class(base, OPENAI_TREE, FREE_WRITES)


def wrap_openai(client: Any, guard: Guard) -> Any:
    """``client`` (an ``OpenAI`` or ``AsyncOpenAI``, or a subclass) as a guarded copy."""
    return wrap_client(client, guard, guarded_openai_class)
