"""Rate limits of the HTTP API, per API key and per tenant, that hold for the whole fleet.

Each limited scope (`key:<id>`, `tenant:<name>`) has up to two token buckets in Redis: requests
(refilled at rpm / 60 per second, holding at most `burst`, by default one minute's rpm) and tokens
(refilled at tpm / 60, holding one minute's tpm). A request takes 1 from every request bucket and
its token estimate (prompt + max_tokens) from every token bucket, all or nothing, in one Lua call:
two API processes racing for a key's last request cannot both get it. A refused request learns
when the emptiest bucket it needs will hold enough (`retry_after_s`) and takes nothing.

Buckets keep `level` and `at` (ms, Redis's own clock: `TIME`, so API hosts' clocks don't matter) and
expire once they would be full again: an idle key costs no memory. Limits themselves live in SQL
(`api_keys.rpm/tpm/burst`, `tenant_limits`); a change applies from the next request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from storage import keys

__all__ = ["UNLIMITED", "Bucket", "RateDecision", "RateLimiter", "RateLimits"]


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens per minute, and the burst of requests; None: not limited."""

    rpm: int | None = None
    tpm: int | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "burst"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value}")

    def columns(self) -> dict[str, int | None]:
        return {"rpm": self.rpm, "tpm": self.tpm, "burst": self.burst}

    def as_json(self) -> dict[str, int | None]:
        return self.columns()


UNLIMITED = RateLimits()


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket as a request left it: what the `x-ratelimit-*` headers report."""

    scope: str  # key:<id> or tenant:<name>
    kind: str  # requests or tokens
    limit: int  # per minute
    remaining: int
    reset_s: float  # until it is full again


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float  # 0 when allowed
    buckets: tuple[Bucket, ...]
    too_large: bool = False  # a request needing more than a bucket can ever hold

    def tightest(self, kind: str) -> Bucket | None:
        """The bucket of `kind` with the least left (what a client should pace itself by)."""
        mine = [b for b in self.buckets if b.kind == kind]
        return min(mine, key=lambda b: b.remaining / b.limit) if mine else None


# KEYS: one hash per bucket. ARGV: per bucket its capacity, refill per ms and cost, in KEYS order.
# Returns {allowed (1/0), wait_ms, level_1, ..., level_n} (levels after the take, or as found).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local levels = {}
local wait = 0
for i = 1, n do
    local cap = tonumber(ARGV[3 * i - 2])
    local rate = tonumber(ARGV[3 * i - 1])
    local cost = tonumber(ARGV[3 * i])
    local state = redis.call('HMGET', KEYS[i], 'level', 'at')
    local level = cap
    if state[1] then
        level = math.min(cap, tonumber(state[1]) + (now - tonumber(state[2])) * rate)
    end
    levels[i] = level
    if level < cost then
        wait = math.max(wait, math.ceil((cost - level) / rate))
    end
end
if wait > 0 then
    local out = {0, wait}
    for i = 1, n do out[#out + 1] = tostring(levels[i]) end
    return out
end
local out = {1, 0}
for i = 1, n do
    local cap = tonumber(ARGV[3 * i - 2])
    local rate = tonumber(ARGV[3 * i - 1])
    local level = levels[i] - tonumber(ARGV[3 * i])
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate) + 1000)
    out[#out + 1] = tostring(level)
end
return out
"""


class RateLimiter:
    """Takes a request (and its tokens) from every bucket that limits it, or says how long to wait."""

    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_TAKE)

    async def take(self, scopes: dict[str, RateLimits], tokens: int) -> RateDecision:
        """One request of `tokens` estimated tokens, against each scope's limits (scope -> limits)."""
        buckets: list[tuple[str, str, int, float, int]] = []  # scope, kind, limit, capacity, cost
        for scope, limits in scopes.items():
            if limits.rpm is not None:
                buckets.append((scope, "requests", limits.rpm, float(limits.burst or limits.rpm), 1))
            if limits.tpm is not None:
                buckets.append((scope, "tokens", limits.tpm, float(limits.tpm), tokens))
        if not buckets:
            return RateDecision(True, 0.0, ())
        if any(cost > capacity for _, _, _, capacity, cost in buckets):
            return RateDecision(False, 0.0, (), too_large=True)
        args: list[Any] = []
        for _, _, limit, capacity, cost in buckets:
            args += [capacity, limit / 60_000, cost]
        names = [keys.rate_bucket(scope, kind) for scope, kind, *_ in buckets]
        allowed, wait_ms, *levels = await self._take(keys=names, args=args)
        report = tuple(
            Bucket(
                scope,
                kind,
                limit,
                max(0, math.floor(float(level))),
                max(0.0, (capacity - float(level)) / (limit / 60)),
            )
            for (scope, kind, limit, capacity, _), level in zip(buckets, levels, strict=True)
        )
        return RateDecision(bool(int(allowed)), int(wait_ms) / 1000, report)
