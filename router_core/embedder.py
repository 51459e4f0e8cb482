"""Embeddings through one embedding deployment, with the router's retry rule (`Router.embed`).

There is no plan: the catalog names the deployment (`Catalog.embedder`). Retryable errors (429,
5xx, timeout, connection, malformed body) are retried there after `retry.backoff` (never sooner
than Retry-After); a fatal error, a Retry-After longer than `max_retry_after_s`, or
`max_attempts_per_deployment` failures give up with `AllAttemptsFailedError` holding every attempt.
Embedding calls do not take part in the fleet's limits, breakers or budgets.
"""

from __future__ import annotations

import asyncio
import random

from router_core.catalog import Deployment
from router_core.clock import Clock
from router_core.errors import (
    AllAttemptsFailedError,
    InvalidRequestError,
    ProviderError,
    ProviderTimeoutError,
)
from router_core.models import Attempt, AttemptOutcome, Embeddings, Usage
from router_core.pricing import Price
from router_core.providers.base import EmbeddingReply, Provider
from router_core.retry import RetryPolicy, backoff

__all__ = ["embed_texts"]


async def embed_texts(
    provider: Provider,
    price: Price,
    texts: list[str],
    *,
    clock: Clock,
    policy: RetryPolicy,
    rng: random.Random,
) -> Embeddings:
    """Embed `texts` on `provider`'s deployment, billed at `price`; see the module docstring.

    Raises:
        InvalidRequestError: no texts, or an empty one.
        AllAttemptsFailedError: the deployment kept failing; `.attempts` has each attempt.
    """
    if not texts or not all(texts):
        raise InvalidRequestError("give at least one text, and no empty text", field="texts")
    dep = provider.deployment
    started = clock.now()
    attempts: list[Attempt] = []
    wait = 0.0
    for n in range(policy.max_attempts_per_deployment):
        if wait:
            await clock.sleep(wait)
        t0 = clock.now()
        try:
            reply = await _call(provider, texts, policy.default_timeout_s)
        except ProviderError as error:
            attempts.append(_failed(dep, error, latency_s=clock.now() - t0, wait_s=wait))
            wait = backoff(policy, rng, n, error.retry_after)
            if not error.retryable or wait > policy.max_retry_after_s:
                break
            continue
        return Embeddings(
            vectors=reply.vectors,
            deployment=dep.id,
            model=dep.model,
            input_tokens=reply.input_tokens,
            cost_usd=price.cost(Usage(input_tokens=reply.input_tokens)),
            latency_ms=(clock.now() - started) * 1000,
            simulated=reply.simulated,
        )
    raise AllAttemptsFailedError(
        f"embedding on {dep.id} failed {len(attempts)} times (last error: {attempts[-1].error}); "
        "each attempt's error is in .attempts",
        attempts,
    )


async def _call(provider: Provider, texts: list[str], timeout_s: float) -> EmbeddingReply:
    dep = provider.deployment
    try:
        async with asyncio.timeout(timeout_s):
            return await provider.embed(texts, dimensions=dep.dimensions, timeout_s=timeout_s)
    except TimeoutError:
        raise ProviderTimeoutError(
            f"{dep.id} did not answer within {timeout_s * 1000:.0f} ms", deployment=dep.id
        ) from None


def _failed(dep: Deployment, error: ProviderError, *, latency_s: float, wait_s: float) -> Attempt:
    return Attempt(
        deployment=dep.id,
        provider=dep.provider,
        model=dep.model,
        outcome=AttemptOutcome.ERROR,
        error_class=type(error).__name__,
        error=str(error),
        status_code=error.status_code,
        latency_ms=latency_s * 1000,
        wait_ms=wait_s * 1000,
    )
