"""Per-key and per-tenant rate limits on the routes that make work, fleet-wide (Redis).

A key's limits (`routeq keys create --rpm/--tpm/--burst`, `routeq keys limit`) and its tenant's
(`routeq keys tenant-limit`) both apply: a request takes one from each request bucket and its
token estimate (the prompt's estimate plus `max_tokens`, or the default completion size, times
`n`) from each token bucket (`storage.fleet.ratelimits`). A refused request is a 429 with
`Retry-After` and OpenAI's `x-ratelimit-*` headers, which the openai SDK reads to pace its retries;
an allowed chat completion carries the same headers. Limited: chat completions and `/v1/jobs`
(requests and tokens), `/v1/batches` and `/v1/route` (requests). Dev mode has no keys and no limits.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from producer.api.errors import ApiError
from router_core.models import ChatRequest
from router_core.tokens import prompt_tokens
from storage.fleet.ratelimits import UNLIMITED, Bucket, RateDecision, RateLimits

if TYPE_CHECKING:
    from producer.api.auth import Principal
    from producer.api.context import ApiContext

__all__ = ["admit", "request_tokens"]

_TENANT_LIMITS_TTL_S = 5.0


def request_tokens(request: ChatRequest, default_completion: int) -> int:
    """What a request counts against a tokens-per-minute limit: prompt estimate + completion cap."""
    prompt = prompt_tokens(m.text() for m in request.messages)
    return prompt + (request.max_tokens or default_completion) * request.choices


async def admit(ctx: ApiContext, principal: Principal, *, tokens: int = 0) -> dict[str, str]:
    """Take this request from the caller's buckets; its `x-ratelimit-*` headers, or a 429."""
    if principal.key_id is None:  # dev mode
        return {}
    scopes = {f"key:{principal.key_id}": principal.limits}
    tenant = await _tenant_limits(ctx, principal.tenant)
    if tenant != UNLIMITED:
        scopes[f"tenant:{principal.tenant}"] = tenant
    decision = await ctx.limiter.take(scopes, tokens)
    if decision.too_large:
        raise ApiError(
            429,
            f"this request needs ~{tokens} tokens, more than a tokens-per-minute limit allows at once; "
            "lower max_tokens or split the prompt",
            type_="tokens",
            code="rate_limit_exceeded",
        )
    headers = _headers(decision)
    if not decision.allowed:
        wait = max(1, math.ceil(decision.retry_after_s))
        raise ApiError(
            429,
            f"rate limit reached ({_which(decision)}); retry after {wait} s",
            type_="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait), **headers},
        )
    return headers


async def _tenant_limits(ctx: ApiContext, tenant: str) -> RateLimits:
    """The tenant's limits, read from SQL at most every few seconds per process."""
    cached = ctx.tenant_limits.get(tenant)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    limits = await ctx.store.api_keys.tenant_limits(tenant)
    if len(ctx.tenant_limits) > 10_000:
        ctx.tenant_limits.clear()
    ctx.tenant_limits[tenant] = (time.monotonic() + _TENANT_LIMITS_TTL_S, limits)
    return limits


def _headers(decision: RateDecision) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        bucket = decision.tightest(kind)
        if bucket is not None:
            headers |= {
                f"x-ratelimit-limit-{kind}": str(bucket.limit),
                f"x-ratelimit-remaining-{kind}": str(bucket.remaining),
                f"x-ratelimit-reset-{kind}": _duration(bucket),
            }
    return headers


def _duration(bucket: Bucket) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `20ms`."""
    seconds = bucket.reset_s
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def _which(decision: RateDecision) -> str:
    empty = [b for b in decision.buckets if b.remaining < 1 or b.kind == "tokens"]
    return ", ".join(f"{b.scope} {b.kind} per minute: {b.limit}" for b in empty[:2]) or "rate limit"
