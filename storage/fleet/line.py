"""`AdmissionLine`: a job that finds no room waits for a turn, fleet-wide, instead of guessing.

A worker asks, before it marks a job running in SQL, whether one of the job's candidates has room
(`turn(..., check_room=True)`); when none has, or when the router found every candidate full
(`check_room=False`), the job takes the earliest turn any candidate can give it and is re-queued
for exactly then. One Lua script per question, over the keys `RedisFleetState` keeps per deployment
(`storage.fleet.state`) and one more:

    routeq:dep:<id>:waiting   zset  job id -> its turn (epoch s, the Redis server's clock)
    routeq:dep:<id>:claims    zset  job id -> when it found room (until admitted, or stale_s)
    routeq:dep:<id>           hash  waits: jobs refused admission so far (a statistic)

A turn is a slot freeing. With `rpm`, the rate log's entries leave the window in score order (a
call in flight is taken to end `latency` from now, measured when it can be), so the k-th job ahead
in the line gets the moment the k-th entry leaves (a slot free now, when there is one), and the
k-th past the limit a cycle (the window, a call's latency and the hop from a turn to its admission)
after the job `rpm` places ahead of it. Only jobs whose turn is still to come are ahead: a job whose
turn passed and has not asked again left a slot free, or lost it to whoever came first.
`max_concurrency` lets the line through `max_concurrency` jobs per call latency; `tpm` waits for
enough tokens to leave the window.
A job is in the line until it asks again, which takes it out; a job that never comes back
(cancelled, its worker died) is dropped `stale_s` after its turn.

Room means: the deployment would admit the call now even after every job that found room before
and is still on its way to admission (its SQL start) took its slot. Such a job holds a claim, which
the router's admission (`RedisFleetState.admit(..., waiter=job)`) takes out in the same step that
takes the slot: a burst of jobs asking at once does not all see the same free slot. Jobs whose turn
has come compete for the free slots as they arrive; one that loses asks again and gets the next
slot to free. Neither a turn nor a claim is a reservation: a job that asks admission without a
place (a new job whose payload carries no request) may take a slot first, and the breaker is left
to `admit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from router_core.catalog import Deployment
from router_core.clock import Clock
from storage import keys
from storage.bus.coalesce import BatchedScript
from storage.connections import as_text
from storage.fleet.state import LUA_COMMON

__all__ = ["AdmissionLine", "Place", "Turn"]

# KEYS: state, inflight, requests, tokens, waiting, claims of each candidate deployment, in plan order.
# ARGV: [1] now, [2] job id, [3] check room 1|0, [4] stale_s (turns and claims), [5] margin after the
#       slot frees,
#       [6] the hop from a turn to the admission (s); then
#       for each deployment: rate window, max_concurrency, rpm, tpm ('' = no limit), tokens wanted,
#       latency of a call (s).
# Returns {'room', n} (deployment n, from 1, has room) or {'wait', n, seconds until its turn}.
_TURN = (
    LUA_COMMON
    + """
local now, job, check = clock(ARGV[1]), ARGV[2], ARGV[3] == '1'
local stale, margin, hop = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local K = 6
local n = #KEYS / K

-- Asking again leaves the line and drops a claim.
for i = 0, n - 1 do
  redis.call('ZREM', KEYS[K * i + 5], job)
  redis.call('ZREM', KEYS[K * i + 6], job)
end
local best, best_turn = 0, nil
for i = 0, n - 1 do
  local state, inflight, requests, tokens, waiting, claims =
    KEYS[K * i + 1], KEYS[K * i + 2], KEYS[K * i + 3], KEYS[K * i + 4], KEYS[K * i + 5], KEYS[K * i + 6]
  local a = 6 + 6 * i
  local window, maxc, rpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tpm, want, latency = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', num(now))
  prune_requests(state, requests, tokens, now - window)
  redis.call('ZREMRANGEBYSCORE', waiting, '-inf', num(now - stale))
  redis.call('ZREMRANGEBYSCORE', claims, '-inf', num(now - stale))
  local used, busy = redis.call('ZCARD', requests), redis.call('ZCARD', inflight)
  -- A call's latency as measured (the live EWMA) when known; a slot is taken again this long
  -- (plus the hop from a job's turn to its admission) after it frees.
  local measured = tonumber(redis.call('HGET', state, 'latency_ms'))
  if measured then latency = math.max(latency, measured / 1000) end
  local cycle = window + latency + hop
  local counted = tonumber(redis.call('HGET', state, 'tokens')) or 0
  -- Jobs due already (their turn passed, they have not asked again) are not ahead: their slots
  -- are free now, or taken by whoever came first.
  local ahead = redis.call('ZCOUNT', waiting, '(' .. num(now), '+inf')
  -- Room after the slots claimed by jobs that found room and are on their way to admission.
  local claimed = redis.call('ZCARD', claims)
  if check and (not rpm or used + claimed < rpm) and (not maxc or busy + claimed < maxc)
      and (not tpm or counted + want <= tpm) then
    redis.call('ZADD', claims, num(now), job)  -- until RedisFleetState.admit takes it out
    return {'room', i + 1}
  end
  local turn = now
  if rpm then
    -- The k-th job ahead takes the k-th slot to free; past rpm, a cycle later per round.
    local free_now = math.max(0, rpm - used)
    local place, rounds = ahead % rpm, math.floor(ahead / rpm)
    local base = now
    if place >= free_now then
      local row = redis.call('ZRANGE', requests, place - free_now, place - free_now, 'WITHSCORES')
      if #row > 0 then base = math.min(tonumber(row[2]), now + latency) + window end
    end
    turn = math.max(turn, base + rounds * cycle)
  end
  if maxc and busy + ahead >= maxc then
    turn = math.max(turn, now + latency * (math.floor((busy + ahead - maxc) / maxc) + 1))
  end
  if tpm and counted + want > tpm then
    turn = math.max(turn, now + tokens_free_in(requests, tokens, window, now, counted + want - tpm))
  end
  if best_turn == nil or turn < best_turn then best, best_turn = i, turn end
end
redis.call('ZADD', KEYS[K * best + 5], num(best_turn), job)
redis.call('HINCRBY', KEYS[K * best + 1], 'waits', 1)
return {'wait', best + 1, num(best_turn - now + margin)}
"""
)

_SERVER_TIME = "-1"


@dataclass(frozen=True, slots=True)
class Place:
    """A candidate deployment of the job asking, with the tokens its call would count (tpm)."""

    deployment: Deployment
    tokens: int


@dataclass(frozen=True, slots=True)
class Turn:
    """The line's answer: `deployment` has room now, or the job's turn on it is `delay_s` away."""

    deployment: str
    room: bool
    delay_s: float = 0.0


class AdmissionLine:
    """The fleet's waiting line per deployment (see the module docstring).

    Args:
        redis: the fleet's Redis.
        rate_margin_s: added to every rate window, as `RedisFleetState` adds it (same setting).
        clock: where time comes from; None (production) means the Redis server's clock.
        stale_s: how long after its turn a job that did not come back is still counted.
        margin_s: added to every turn, so the job arrives just after its slot frees, not before.
        hop_s: how long a job takes from its turn to its admission (pick-up, plan, SQL start):
            a slot freed is taken again about this long later, which turns further out count in.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        rate_margin_s: float = 0.0,
        clock: Clock | None = None,
        stale_s: float = 2.0,
        margin_s: float = 0.005,
        hop_s: float = 0.05,
    ) -> None:
        self._rate_margin_s = rate_margin_s
        self._clock = clock
        self._stale_s = stale_s
        self._margin_s = margin_s
        self._hop_s = hop_s
        self._redis = redis
        self._script = BatchedScript(redis, _TURN)

    async def turn(self, job_id: str, places: Sequence[Place], *, check_room: bool) -> Turn:
        """Room on the first candidate that has it (`check_room`), else the job's earliest turn.

        Either way the job leaves the line it was in; a turn puts it in the line of the deployment
        that gives the earliest one (ties: the first in plan order).
        """
        if not places:
            raise ValueError("a turn needs at least one candidate deployment")
        script_keys: list[str] = []
        args: list[str] = [
            _SERVER_TIME if self._clock is None else repr(float(self._clock.now())),
            job_id,
            "1" if check_room else "0",
            repr(self._stale_s),
            repr(self._margin_s),
            repr(self._hop_s),
        ]
        for place in places:
            dep = place.deployment
            script_keys += [
                keys.deployment(dep.id),
                keys.deployment_inflight(dep.id),
                keys.deployment_requests(dep.id),
                keys.deployment_tokens(dep.id),
                keys.deployment_waiting(dep.id),
                keys.deployment_claims(dep.id),
            ]
            args += [
                repr(float(dep.rate_window_s + self._rate_margin_s)),
                _limit(dep.max_concurrency),
                _limit(dep.rpm),
                _limit(dep.tpm),
                str(place.tokens),
                repr(dep.latency_ms / 1000),
            ]
        reply: list[Any] = await self._script(keys=script_keys, args=args)
        status, index = as_text(reply[0]), int(reply[1])
        deployment = places[index - 1].deployment.id
        if status == "room":
            return Turn(deployment, room=True)
        return Turn(deployment, room=False, delay_s=float(as_text(reply[2])))

    async def drop_claim(self, job_id: str, deployment_id: str) -> None:
        """End `job_id`'s claim on a slot of `deployment_id` that it will not take."""
        await self._redis.zrem(keys.deployment_claims(deployment_id), job_id)


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)
