"""The one place where SDK and transport exceptions become routeq's error classes.

Both official SDKs share the same exception shapes (APIStatusError with `status_code`, `response`
and `body`; APITimeoutError; APIConnectionError; APIResponseValidationError), so one mapping serves
both, keyed on the status code and the provider's error code. The anthropic SDK is imported only where
an Anthropic deployment is built (providers/factory.py), so its classes are looked up only once it is
loaded: an exception cannot come from an SDK this process never imported.
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
from datetime import UTC
from typing import TYPE_CHECKING, cast

import httpx2

from router_core.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from router_core.redact import mask_url, redact_keys

if TYPE_CHECKING:
    import anthropic
    import openai

    SdkStatusError = openai.APIStatusError | anthropic.APIStatusError

__all__ = ["map_provider_error", "parse_retry_after"]

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "context window",
)
# The SDKs whose exception classes are mapped below, by module name.
_SDKS = ("openai", "anthropic")
# Python-level errors raised while parsing a 2xx body.
_PARSE_ERRORS = (json.JSONDecodeError, ValueError, KeyError, TypeError, IndexError)


def parse_retry_after(headers: httpx2.Headers | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (delta-seconds or an HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a "-0000" zone parses without one
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _request_url(exc: BaseException) -> str | None:
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx raises when an exception carries no request
        return None
    return mask_url(str(request.url)) if request is not None else None


def _status_error(exc: SdkStatusError, deployment: str) -> ProviderError:
    status = exc.status_code
    text = f"HTTP {status} from {deployment}: {redact_keys(exc.message)}"
    if status == 429:
        return RateLimitedError(
            text,
            status_code=status,
            retry_after=parse_retry_after(exc.response.headers),
            deployment=deployment,
        )
    if status >= 500:
        return ProviderServerError(
            text,
            status_code=status,
            retry_after=parse_retry_after(exc.response.headers),
            deployment=deployment,
        )
    if status in (401, 403):
        return AuthenticationError(
            f"{text}. Check the API key in the deployment's api_key_env variable.",
            status_code=status,
            deployment=deployment,
        )
    blob = f"{getattr(exc, 'code', '') or ''} {text}".lower()
    if any(marker in blob for marker in _CONTEXT_MARKERS):
        return ContextLengthError(text, status_code=status, deployment=deployment)
    if status in (408, 409):  # request timeout / conflict: transient by HTTP's own definition
        return ProviderServerError(text, status_code=status, deployment=deployment)
    return BadRequestError(text, status_code=status, deployment=deployment)


def _sdk_classes(name: str) -> tuple[type[BaseException], ...]:
    """The exception class `name` (e.g. "APIStatusError") of every provider SDK loaded."""
    return tuple(getattr(sys.modules[sdk], name) for sdk in _SDKS if sdk in sys.modules)


def map_provider_error(exc: BaseException, deployment: str, *, parsing: bool = False) -> ProviderError:
    """Translate an exception raised during a provider call. Unknown exceptions are re-raised.

    `parsing` says the exception came from reading a 2xx body: a ValueError there is a malformed
    response (retryable), while before the request was sent it is the SDK refusing the request.
    """
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, _sdk_classes("APIStatusError")):
        return _status_error(cast("SdkStatusError", exc), deployment)
    # Timeout before connection error: the SDKs' timeout class subclasses their connection error.
    if isinstance(exc, (*_sdk_classes("APITimeoutError"), TimeoutError)):
        return ProviderTimeoutError(f"{deployment} did not answer in time", deployment=deployment)
    if isinstance(exc, (*_sdk_classes("APIConnectionError"), httpx2.TransportError)):
        cause = exc.__cause__ or exc
        url = _request_url(exc)
        return ProviderConnectionError(
            f"connection to {deployment}{f' at {url}' if url else ''} failed: {type(cause).__name__}: "
            f"{redact_keys(str(cause))}. Check the deployment's base_url and that the host is reachable.",
            deployment=deployment,
        )
    if isinstance(exc, _sdk_classes("APIResponseValidationError")) or (
        parsing and isinstance(exc, _PARSE_ERRORS)
    ):
        return MalformedResponseError(
            f"{deployment} sent a response that could not be parsed: {type(exc).__name__}: "
            f"{redact_keys(str(exc))}",
            deployment=deployment,
        )
    if isinstance(exc, ValueError | TypeError):
        return BadRequestError(
            f"the SDK refused the request for {deployment} before sending it: {exc}", deployment=deployment
        )
    raise exc
