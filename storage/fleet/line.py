"""`AdmissionLine`: a job that finds no room waits for a turn, fleet-wide, instead of guessing.

A worker asks, before it marks a job running in SQL, whether one of the job's candidates has room
(`turn(..., check_room=True)`); when none has, or when the router found every candidate full
(`check_room=False`), the job takes the earliest turn any candidate can give it and is re-queued
for exactly then. One Lua script per question, over the keys `RedisFleetState` keeps per deployment
(`storage.fleet.state`) and one more:

    routeq:dep:<id>:waiting   zset  job id -> its turn (epoch s, the Redis server's clock)
    routeq:dep:<id>:claims    zset  job id -> when it found room (until admitted, or stale_s)
    routeq:dep:<id>           hash  waits: refusals re-queued to their turn; holds: refusals
                                    whose job waits for its turn in its worker (statistics);
                                    hop_s: from room found to admission (EWMA, set by admit)

A turn is a slot freeing. With `rpm`, the rate log's entries leave the window in score order (a
call in flight is taken to stop counting its latency from now, less the time the provider says it
holds a call (`held_ms`, both measured when they can be), and at most the arrival margin: see
"Rate windows" in `router_core.fleet`), so the k-th job ahead in the line gets the moment the
k-th entry leaves, less the lead (below; a slot free now, when there is one; slots claimed by jobs
on their way to admission leave last), and the k-th past the limit a cycle (the window and that
latency less the hold) after the job `rpm` places ahead of it. Jobs
whose turn is still to come are ahead; jobs whose turn has come and who have not asked again yet
(woken in their worker, or re-queued and on their way back through arq) keep a free slot each, in
the order of their turns, until `stale_s` after their turn: a job that asks without a turn (a new
one) does not take the slot of one whose turn came a moment ago.
`max_concurrency` lets the line through `max_concurrency` jobs per call latency; `tpm` waits for
enough tokens to leave the window.
A job is in the line until it asks again, which takes it out; a job that never comes back
(cancelled, its worker died) is dropped `stale_s` after its turn.

Room means: the deployment would admit the call now even after every job that found room before
and is still on its way to admission (its SQL start), and every job due before it, took its slot;
or would, once rate-log entries leaving within the lead (`hop_s`, the least hop) have left. A job
takes that long from finding room to its admission (SQL start, cache lookup, budget hold), so it
finds room a lead before its slot frees, its turn comes a lead before that, and it is told when the
slot frees (`Turn.ready_s`): the worker admits it no sooner, and a slot is taken again a window and
the call's lag after it frees instead of a hop later still. The lead is fixed: the hop the
admissions measure includes that wait, and a lead following it would grow without end.
A job that found room holds a claim, which the router's admission
(`RedisFleetState.admit(..., waiter=job)`) takes out in the same step that takes the slot: a burst
of jobs asking at once does not all see the same free slot. A job that finds no room at its turn
(its slot went to a call the line did not see) asks again and gets the next slot to free. Neither
a turn nor a claim is a reservation in `admit`: a job that asks admission without a place (a new
job whose payload carries no request, a failover) may take a slot first, and the breaker is left
to `admit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from router_core.catalog import Deployment
from router_core.clock import Clock
from router_core.fleet import ARRIVAL_MARGIN_S
from storage import keys
from storage.bus.coalesce import BatchedScript
from storage.connections import as_text
from storage.fleet._state_scripts import LUA_COMMON

__all__ = ["AdmissionLine", "Place", "Turn"]

# KEYS: state, inflight, requests, tokens, waiting, claims of each candidate deployment, in plan order.
# ARGV: [1] now, [2] job id, [3] check room 1|0, [4] stale_s (turns and claims), [5] margin after the
#       slot frees, [6] the least hop from a turn to the admission (s), [7] the arrival margin (s: a call
#       in flight counts until a window after at most this long), [8] the longest wait the job
#       holds in its worker (a refusal with a turn further out is re-queued, and counted in
#       `waits`; one within it in `holds`); then
#       for each deployment: rate window, max_concurrency, rpm, tpm ('' = no limit), tokens wanted,
#       latency of a call (s).
# Returns {'room', n} (deployment n, from 1, has room) or {'wait', n, seconds until its turn}.
_TURN = (
    LUA_COMMON
    + """
local now, job, check = clock(ARGV[1]), ARGV[2], ARGV[3] == '1'
local stale, margin, least_hop = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local arrival, hold = tonumber(ARGV[7]), tonumber(ARGV[8])
local K = 6
local n = #KEYS / K

-- Asking again leaves the line (the job's turn, if it had one, is kept for the order of those
-- due) and drops a claim.
local mine, mine_in, rank = nil, nil, nil
for i = 0, n - 1 do
  redis.call('ZREMRANGEBYSCORE', KEYS[K * i + 5], '-inf', num(now - stale))
  redis.call('ZREMRANGEBYSCORE', KEYS[K * i + 6], '-inf', num(now - stale))
  local had = redis.call('ZSCORE', KEYS[K * i + 5], job)
  if had then
    -- Its rank orders it among jobs given the same turn (by id), so they wake one slot apart.
    mine, mine_in, rank = tonumber(had), i, redis.call('ZRANK', KEYS[K * i + 5], job)
  end
  redis.call('ZREM', KEYS[K * i + 5], job)
  redis.call('ZREM', KEYS[K * i + 6], job)
end
local best, best_turn = 0, nil
for i = 0, n - 1 do
  local state, inflight, requests, tokens, waiting, claims =
    KEYS[K * i + 1], KEYS[K * i + 2], KEYS[K * i + 3], KEYS[K * i + 4], KEYS[K * i + 5], KEYS[K * i + 6]
  local a = 8 + 6 * i
  local window, maxc, rpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tpm, want, latency = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', num(now))
  prune_requests(state, requests, tokens, now - window)
  local used, busy = redis.call('ZCARD', requests), redis.call('ZCARD', inflight)
  -- A call's latency as measured (the live EWMA) when known. A call counts until a window after
  -- its answer less the time the provider says it held it, or after its start plus the arrival
  -- margin if sooner (router_core.fleet): `lag` from its start. So a slot is taken again a window
  -- and this long after (below: the hop to the admission overlaps the wait).
  local measured = redis.call('HMGET', state, 'latency_ms', 'hop_s', 'held_ms')
  if measured[1] then latency = math.max(latency, tonumber(measured[1]) / 1000) end
  -- The hop as the admissions measured it (from room found to slot taken: a busy worker's is long).
  local hop = math.max(least_hop, tonumber(measured[2]) or 0)
  local lag = math.min(math.max(0, latency - (tonumber(measured[3]) or 0) / 1000), arrival)
  latency = math.min(latency, arrival)
  -- A job finding room `lead` (the least hop) before its slot frees reaches its admission about
  -- when it frees (the hop is its SQL start and the rest, and it waits for the rest of the lead):
  -- the slot is taken again a window and `lag` after, not a hop later too. The lead is fixed, not
  -- the measured hop: a job waiting for its slot lengthens the hop the admissions measure.
  local lead = least_hop
  local cycle = window + lag
  local counted = tonumber(redis.call('HGET', state, 'tokens')) or 0
  -- A line is in the order of turns: ahead of a job in its own line are the jobs its rank says;
  -- in another line, every job in it (it is new there). Of those, the jobs due (within a hop: a
  -- slot that frees a little before the turn it was promised for is theirs too) keep a free slot
  -- each: they are on their way back (woken in their worker, or re-queued and being delivered)
  -- until stale_s.
  local ahead = redis.call('ZCARD', waiting)
  local due = redis.call('ZCOUNT', waiting, '-inf', num(now + hop))
  if mine_in == i then ahead, due = rank, math.min(due, rank) end
  -- Room after the slots claimed by jobs that found room and are on their way to admission, and
  -- those kept for the jobs due.
  local claimed = redis.call('ZCARD', claims)
  -- Entries leaving the window within the lead count as free: the job is told when its slot frees
  -- (`ready`), and is admitted no sooner.
  local leaving = 0
  if rpm then leaving = redis.call('ZCOUNT', requests, '-inf', num(now + lead - window)) end
  if check and (not rpm or used - leaving + claimed + due < rpm) and (not maxc or busy + claimed + due < maxc)
      and (not tpm or counted + want <= tpm) then
    redis.call('ZADD', claims, num(now), job)  -- until RedisFleetState.admit takes it out
    local ready, k = 0, rpm and used + claimed + due - rpm or -1
    if k >= 0 then  -- the (k+1)-th entry to leave frees this job's slot
      local row = redis.call('ZRANGE', requests, k, k, 'WITHSCORES')
      ready = math.max(0, tonumber(row[2]) + window - now) + margin  -- just after, as a turn
    end
    return {'room', i + 1, num(ready)}
  end
  local function turn_for(ahead)
    local turn = now
    if rpm then
      -- The k-th job ahead takes the k-th slot to free: a free one now, then the log's entries in
      -- the order they leave, then the slots claimed by jobs on their way to admission (admitted
      -- about a hop from now); past rpm, a cycle later per round. Its turn comes `lead` before its
      -- slot frees (it finds room then: see above).
      local free_now = math.max(0, rpm - used - claimed)
      local place, rounds = ahead % rpm, math.floor(ahead / rpm)
      local base = now
      if place >= free_now then
        local row = redis.call('ZRANGE', requests, place - free_now, place - free_now, 'WITHSCORES')
        if #row > 0 then
          base = math.min(tonumber(row[2]), now + lag) + window
        else
          base = now + hop + lag + window
        end
      end
      turn = math.max(turn, base - lead + rounds * cycle)
    end
    if maxc and busy + claimed + ahead >= maxc then
      turn = math.max(turn, now + latency * (math.floor((busy + claimed + ahead - maxc) / maxc) + 1))
    end
    if tpm and counted + want > tpm then
      turn = math.max(turn, now + tokens_free_in(requests, tokens, window, now, counted + want - tpm))
    end
    return turn
  end
  local turn = turn_for(ahead)
  if mine_in == i then
    -- Back in its own line after its turn, the job keeps its rank, behind the jobs given a turn
    -- at or before the one it gets now: they were promised those slots before it.
    for _ = 1, 8 do
      local later = turn_for(rank + redis.call('ZCOUNT', waiting, '(' .. num(now), num(turn)))
      if later <= turn then break end
      turn = later
    end
  end
  if best_turn == nil or turn < best_turn then best, best_turn = i, turn end
end
redis.call('ZADD', KEYS[K * best + 5], num(best_turn), job)
local delay = best_turn - now + margin
redis.call('HINCRBY', KEYS[K * best + 1], delay > hold and 'waits' or 'holds', 1)
return {'wait', best + 1, num(delay)}
"""
)

_SERVER_TIME = "-1"


@dataclass(frozen=True, slots=True)
class Place:
    """A candidate deployment of the job asking, with the tokens its call would count (tpm)."""

    deployment: Deployment
    tokens: int

    @property
    def unlimited(self) -> bool:
        """No capacity limit (rpm, tpm, concurrency): only the breaker can refuse a call, no line."""
        dep = self.deployment
        return dep.rpm is None and dep.tpm is None and dep.max_concurrency is None


@dataclass(frozen=True, slots=True)
class Turn:
    """The line's answer: `deployment` has room now, or the job's turn on it is `delay_s` away.

    Room may be a slot that frees within a hop (the job's way to its admission): `ready_s` from
    now, when the job may be admitted (0: free now).
    """

    deployment: str
    room: bool
    delay_s: float = 0.0
    ready_s: float = 0.0


class AdmissionLine:
    """The fleet's waiting line per deployment (see the module docstring).

    Args:
        redis: the fleet's Redis.
        arrival_margin_s: as `RedisFleetState`'s (same setting): a call counts until a window after
            its answer, or after its start plus this margin if sooner.
        clock: where time comes from; None (production) means the Redis server's clock.
        stale_s: how long after its turn a job that did not come back is still counted.
        margin_s: added to every turn, so the job arrives just after its slot frees, not before.
        hop_s: how long a job takes from its turn to its admission (pick-up, plan, SQL start).
            The least taken: the admissions measure it per deployment (`hop_s` of its hash). It
            is also the lead: a job finds room this long before its slot frees (`Turn.ready_s`).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        arrival_margin_s: float = ARRIVAL_MARGIN_S,
        clock: Clock | None = None,
        stale_s: float = 2.0,
        margin_s: float = 0.005,
        hop_s: float = 0.05,
    ) -> None:
        self._arrival_margin_s = arrival_margin_s
        self._clock = clock
        self._stale_s = stale_s
        self._margin_s = margin_s
        self._hop_s = hop_s
        self._redis = redis
        self._script = BatchedScript(redis, _TURN)

    async def turn(
        self, job_id: str, places: Sequence[Place], *, check_room: bool, hold_s: float = 0.0
    ) -> Turn:
        """Room on the first candidate that has it (`check_room`), else the job's earliest turn.

        Either way the job leaves the line it was in; a turn puts it in the line of the deployment
        that gives the earliest one (ties: the first in plan order). `hold_s`: the longest the job
        will wait for its turn in its worker (the statistics tell a hold from a re-queue).
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
            repr(float(self._arrival_margin_s)),
            repr(float(hold_s)),
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
                repr(float(dep.rate_window_s)),
                _limit(dep.max_concurrency),
                _limit(dep.rpm),
                _limit(dep.tpm),
                str(place.tokens),
                repr(dep.latency_ms / 1000),
            ]
        reply: list[Any] = await self._script(keys=script_keys, args=args)
        status, index, seconds = as_text(reply[0]), int(reply[1]), float(as_text(reply[2]))
        deployment = places[index - 1].deployment.id
        if status == "room":
            return Turn(deployment, room=True, ready_s=seconds)
        return Turn(deployment, room=False, delay_s=seconds)

    async def wait_for_room(self, job_id: str, places: Sequence[Place], wait_s: float, clock: Clock) -> Turn:
        """Room, or a turn further off than what is left of `wait_s` (a turn to re-queue the job at).

        A turn within `wait_s` (in all) is waited for on `clock` and the line asked again: a job
        re-queued to its turn would cost an arq delivery (a claim, a lease, a payload read) to
        come back at the same moment. A turn is not a reservation: a job that finds the slot
        taken at its turn gets the next one.
        """
        left = wait_s
        turn = await self.turn(job_id, places, check_room=True, hold_s=left)
        while not turn.room and turn.delay_s <= left:
            await clock.sleep(turn.delay_s)
            left -= turn.delay_s
            turn = await self.turn(job_id, places, check_room=True, hold_s=left)
        return turn

    async def drop_claim(self, job_id: str, deployment_id: str) -> None:
        """End `job_id`'s claim on a slot of `deployment_id` that it will not take."""
        await self._redis.zrem(keys.deployment_claims(deployment_id), job_id)


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)
