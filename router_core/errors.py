"""routeq's exception tree. Every error raised to a caller derives from `RouteqError`.

    RouteqError
    ├── ConfigError                   bad catalog or settings (names file, deployment, field)
    ├── InvalidRequestError           a request the router cannot accept (names the field)
    ├── NoRouteError                  no deployment satisfies the request; carries the exclusions
    ├── AllAttemptsFailedError        every candidate was tried and failed; carries the attempts
    │   ├── BudgetExceededError           the spend cap leaves no room for any candidate's worst case
    │   └── CapacityExhaustedError        every candidate is full (rate, concurrency, breaker): retry
    ├── StreamInterruptedError        a stream failed after its first text was delivered
    └── ProviderError                 one failed provider call (raised inside the retry loop)
        ├── RetryableProviderError    worth another try on the same deployment
        │   ├── RateLimitedError          429; `retry_after` holds the provider's Retry-After
        │   ├── ProviderServerError       5xx / overloaded
        │   ├── ProviderTimeoutError      no answer within the attempt's timeout
        │   ├── ProviderConnectionError   refused, reset or dropped connection
        │   └── MalformedResponseError    a 2xx whose body could not be parsed
        └── FatalProviderError        retrying the same deployment cannot help: fail over at once
            ├── AuthenticationError       401/403: key missing, wrong or without access
            ├── BadRequestError           400/404/422 the provider refused the request
            └── ContextLengthError        the prompt does not fit the model's context window

SDK exceptions are translated into this tree in one place: `router_core.providers.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router_core.models import Attempt, Exclusion, Usage

__all__ = [
    "AllAttemptsFailedError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "CapacityExhaustedError",
    "ConfigError",
    "ContextLengthError",
    "FatalProviderError",
    "InvalidOutputError",
    "InvalidRequestError",
    "MalformedResponseError",
    "NoRouteError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "RateLimitedError",
    "RetryableProviderError",
    "RouteqError",
    "StreamInterruptedError",
]


class RouteqError(Exception):
    """Base class of every error routeq raises on purpose."""


class ConfigError(RouteqError):
    """The catalog or settings are invalid. The message names the file, deployment and field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        deployment: str | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.deployment = deployment
        self.field = field
        where = ", ".join(
            part
            for part in (
                f"file {path}" if path else "",
                f"deployment {deployment!r}" if deployment else "",
                f"field {field!r}" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class InvalidRequestError(RouteqError):
    """The request itself is unusable (empty messages, unknown model, bad preference)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NoRouteError(RouteqError):
    """No deployment can serve the request under its constraints.

    `exclusions` says why each deployment was left out; the message summarises them and suggests
    which constraint to relax.
    """

    def __init__(self, message: str, exclusions: Sequence[Exclusion] = ()) -> None:
        self.exclusions = list(exclusions)
        details = "; ".join(f"{e.deployment}: {e.detail}" for e in self.exclusions[:8])
        more = f" (+{len(self.exclusions) - 8} more)" if len(self.exclusions) > 8 else ""
        super().__init__(f"{message}. {details}{more}" if details else message)


class AllAttemptsFailedError(RouteqError):
    """Every candidate deployment was tried and none succeeded; `attempts` lists each try."""

    def __init__(self, message: str, attempts: Sequence[Attempt]) -> None:
        self.attempts = list(attempts)
        super().__init__(message)


class BudgetExceededError(AllAttemptsFailedError):
    """No candidate's worst-case cost fits the remaining budget (HTTP 402 in the API).

    `refusals` names each cap that refused, with its spend, reservations and what was needed.
    """

    def __init__(self, message: str, attempts: Sequence[Attempt], refusals: Sequence[str]) -> None:
        self.refusals = list(refusals)
        super().__init__(message, attempts)


class CapacityExhaustedError(AllAttemptsFailedError):
    """Every remaining candidate refused the call for now (rate limit, concurrency, open circuit).

    Not a failure of the job: run it again after `retry_after_s`, when room is expected.
    `spread_s` is how long the full candidates take to free all their room again (their rate
    window): many waiting jobs should spread their retries over it rather than all come back
    for the first free slot at once.
    """

    def __init__(
        self, message: str, attempts: Sequence[Attempt], retry_after_s: float, spread_s: float = 0.0
    ) -> None:
        self.retry_after_s = retry_after_s
        self.spread_s = spread_s
        super().__init__(message, attempts)


class StreamInterruptedError(RouteqError):
    """A streamed answer broke off after text was already delivered, so it cannot fail over.

    `attempts` ends with the interrupted one. Retry the whole request if partial text is useless.
    """

    def __init__(self, message: str, attempts: Sequence[Attempt]) -> None:
        self.attempts = list(attempts)
        super().__init__(message)


class ProviderError(RouteqError):
    """One provider call failed. `status_code` is the HTTP status when there was a response."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        deployment: str | None = None,
        billed: Usage | None = None,
    ) -> None:
        self.status_code = status_code
        self.retry_after = retry_after
        self.deployment = deployment
        # What the provider billed although the call failed (an answer that broke the schema,
        # the finished calls of a fan-out); None when nothing was billed.
        self.billed = billed
        super().__init__(message)


class RetryableProviderError(ProviderError):
    """A transient failure: the same deployment may succeed on another try."""

    retryable = True


class RateLimitedError(RetryableProviderError):
    """HTTP 429. Wait at least `retry_after` seconds before calling this deployment again."""


class ProviderServerError(RetryableProviderError):
    """HTTP 5xx (or 529 overloaded) from the provider."""


class ProviderTimeoutError(RetryableProviderError):
    """The provider did not answer within the attempt's timeout (`timeout_ms`)."""


class ProviderConnectionError(RetryableProviderError):
    """The connection could not be made or was dropped. Check the deployment's base_url."""


class MalformedResponseError(RetryableProviderError):
    """The provider answered 2xx with a body the SDK could not parse."""


class FatalProviderError(ProviderError):
    """Retrying this deployment cannot help; the router fails over to the next candidate."""


class AuthenticationError(FatalProviderError):
    """HTTP 401/403: set a valid key in the deployment's `api_key_env` variable."""


class BadRequestError(FatalProviderError):
    """The provider refused the request as invalid (400/404/422)."""


class InvalidOutputError(FatalProviderError):
    """The provider answered, and billed, but not with JSON valid for the requested schema.

    Retrying the same model on the same prompt tends to repeat the mistake at full price, so the
    router fails over to the next candidate at once; `billed` carries the answer's usage.
    """


class ContextLengthError(FatalProviderError):
    """The prompt does not fit; the router skips to a candidate with a larger context window."""
