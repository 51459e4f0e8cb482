"""A Chat Completions request body (or a short-form line) as the fields of a `ChatRequest`.

`producer.inputs` reads both batch line formats and the body of `POST /v1/chat/completions` with
this: which keys a body may carry, ``max_completion_tokens`` as an alias of ``max_tokens``, and a
``router:<strategy>`` model turned into model ``auto`` plus that strategy. Every field of the Chat
Completions language that `ChatRequest` models (tools, tool_choice, response_format, stop, top_p,
seed, penalties, logit_bias, logprobs, reasoning_effort, n, user, metadata, service_tier...) passes
through as given, to be validated by `ChatRequest` and named by field when it is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from producer._reasons import show
from router_core.errors import InvalidRequestError
from router_core.models import STRATEGY_ALIASES, ChatRequest, Strategy

__all__ = [
    "BODY_KEYS",
    "CHAT_ONLY",
    "REQUEST_FIELDS",
    "ROUTER_MODEL_PREFIX",
    "body_key_problems",
    "reference_problem",
    "request_payload",
]

ROUTER_MODEL_PREFIX = "router:"
"""``model`` values starting with this name a routing strategy instead of a model."""

REQUEST_FIELDS = frozenset(ChatRequest.model_fields) - {"messages", "max_tokens", "preferences"}
"""Request fields taken as they are given (``messages``, ``max_tokens`` and ``preferences`` are
read on their own: a prompt, an alias, a ``router:`` model)."""

_BODY_IGNORED = frozenset({"store"})
"""Accepted and ignored: ``store`` asks OpenAI to keep the completion in its own storage; routeq
stores every job's request and answer in its database anyway."""
CHAT_ONLY = frozenset({"stream", "stream_options"})
"""Keys of a chat completion body that the HTTP API honours itself (streaming)."""
BODY_KEYS = (
    REQUEST_FIELDS
    | {"messages", "max_tokens", "max_completion_tokens", "preferences"}
    | _BODY_IGNORED
    | {"stream"}
)
"""Every key a batch line's ``body`` may hold (``stream`` only as false)."""


def body_key_problems(body: dict[str, Any], prefix: str) -> Iterator[str]:
    """A problem for each key of a chat completion body that routeq cannot honour."""
    for key in body:
        if key not in BODY_KEYS:
            yield f"{prefix}{key} is not supported: routeq cannot honour it"


def request_payload(source: dict[str, Any], prefix: str, problems: list[str]) -> tuple[dict[str, Any], bool]:
    """The ChatRequest fields of `source` except ``messages``; problems found are appended.

    Returns:
        The payload and whether ``max_completion_tokens`` supplied ``max_tokens``.
    """
    payload = {key: value for key, value in source.items() if key in REQUEST_FIELDS}
    max_tokens, max_completion = source.get("max_tokens"), source.get("max_completion_tokens")
    alias_used = max_tokens is None and max_completion is not None
    if max_tokens is not None and max_completion is not None:
        problems.append(f"give only one of {prefix}max_tokens and {prefix}max_completion_tokens")
    elif max_tokens is not None or max_completion is not None:
        payload["max_tokens"] = max_completion if alias_used else max_tokens
    _apply_preferences(payload, source.get("preferences"), prefix, problems)
    return payload, alias_used


def reference_problem(exc: InvalidRequestError) -> tuple[str | None, str]:
    """The field `check_references` refused (a request field's path) and why."""
    if exc.field is None:
        return None, str(exc)
    return exc.field, str(exc).removeprefix(f"{exc.field}: ")


_SET_BY_ROUTEQ = {
    "strategy_source": "where the strategy came from, when the job is made",
    "allowed_models": "from the API key's allowed models (routeq keys limit --allow-model)",
}
"""Preferences routeq sets itself: a request may not set them (nor widen a key's models)."""


def _apply_preferences(payload: dict[str, Any], preferences: Any, prefix: str, problems: list[str]) -> None:
    """Set payload's preferences, turning a ``router:<strategy>`` model into model auto + strategy."""
    if preferences is not None:
        payload["preferences"] = preferences
    if isinstance(preferences, dict):
        for key in _SET_BY_ROUTEQ.keys() & preferences.keys():
            problems.append(
                f"{prefix}preferences.{key} is set by routeq ({_SET_BY_ROUTEQ[key]}), not by a request"
            )
    model = payload.get("model")
    if model is None:
        payload.pop("model", None)
        return
    if isinstance(model, str) and not model.strip():
        problems.append(f"{prefix}model is empty: leave it out or use 'auto'")
        return
    if not isinstance(model, str) or not model.lower().startswith(ROUTER_MODEL_PREFIX):
        return
    payload["model"] = "auto"
    name = model[len(ROUTER_MODEL_PREFIX) :].strip().lower()
    strategy = STRATEGY_ALIASES.get(name) or _strategy(name)
    if strategy is None:
        known = ", ".join([*Strategy, *STRATEGY_ALIASES])
        problems.append(f"{prefix}model: unknown strategy {show(name)} in {show(model)} (known: {known})")
        return
    if preferences is None:
        payload["preferences"] = {"strategy": strategy.value}
    elif isinstance(preferences, dict) and preferences.get("strategy") is None:
        payload["preferences"] = {**preferences, "strategy": strategy.value}


def _strategy(name: str) -> Strategy | None:
    try:
        return Strategy(name)
    except ValueError:
        return None
