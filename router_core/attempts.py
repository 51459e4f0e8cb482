"""What an attempt's outcome was: for the deployment's health (the breaker), for the attempt's
record, and whether its answer is the JSON the request asked for."""

from __future__ import annotations

from typing import Any

from router_core.chat import output_problem
from router_core.errors import AuthenticationError, InvalidOutputError, ProviderError, RateLimitedError
from router_core.fleet import CallOutcome
from router_core.models import Attempt, AttemptOutcome, ChatRequest
from router_core.providers.base import ProviderReply

__all__ = ["attempt_outcome", "check_output", "failed_attempt", "health_outcome"]


def health_outcome(error: ProviderError) -> CallOutcome:
    """429s and request errors say nothing about a deployment's health; auth and 5xx do."""
    if isinstance(error, AuthenticationError) or (
        error.retryable and not isinstance(error, RateLimitedError)
    ):
        return CallOutcome.FAILURE
    return CallOutcome.NEUTRAL


def attempt_outcome(error: ProviderError | None) -> AttemptOutcome:
    if error is None:
        return AttemptOutcome.SUCCESS
    return AttemptOutcome.INVALID_OUTPUT if isinstance(error, InvalidOutputError) else AttemptOutcome.ERROR


def failed_attempt(attempt: Attempt, error: ProviderError, **charge: Any) -> Attempt:
    """`attempt` marked as failed by `error` (a stream that broke off or ended invalid), with the
    `charge` (usage, cost) of what the provider sent, if any."""
    update = {"outcome": attempt_outcome(error), "error_class": type(error).__name__, "error": str(error)}
    return attempt.model_copy(update=update | charge)


def check_output(request: ChatRequest, deployment: str, reply: ProviderReply) -> None:
    """Raise `InvalidOutputError` when an answer breaks the JSON schema the request asked for.

    An answer that called tools instead (finish_reason "tool_calls") or that the model refused
    has no JSON to check.
    """
    schema = request.output_schema
    if schema is None:
        return
    for choice in reply.choices:
        if choice.message.get("tool_calls") or choice.message.get("refusal"):
            continue
        problem = output_problem(schema, choice.text)
        if problem is not None:
            where = f" (choice {choice.index})" if len(reply.choices) > 1 else ""
            raise InvalidOutputError(
                f"{deployment}{where}: {problem}", deployment=deployment, billed=reply.usage
            )
