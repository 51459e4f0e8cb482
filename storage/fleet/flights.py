"""Single-flight: identical requests in flight at once make one provider call between them.

Jobs of one tenant whose requests are identical (the same cache key and constraints: a *flight*)
may run at the same moment on different workers; the cache holds no answer yet, so each would call.
Instead the first to `enter` becomes the flight's leader and calls; the others wait for it:

    routeq:flight:<tenant>:<hash>           the leader's job id, with a lease (SET NX PX)
    routeq:flight:<tenant>:<hash>:waiting   how many jobs wait (so a flight nobody waits for
                                            publishes nothing when it ends)
    routeq:flight-done:<tenant>:<hash>      published when the leader leaves, if anyone waits

The leader leaves after its answer is committed to SQL (or it failed); the waiters wake, read the
cache, and either take the answer or (it failed) race to `enter`: one becomes the next leader. A
leader that dies without leaving loses the flight when its lease runs out; a waiter also wakes then
(`enter` tells it how long the lease has left). Entering and leaving are one Lua call each.

Leaving leaves a mark (`done:<job>`, for `DONE_TTL_S`) instead of deleting the key. A job reads the
cache before it enters, so a job that enters an empty flight knows nothing was answered since its
read, and calls; one that finds the mark leads too, but reads the cache once more first: the answer
may have been committed between its read and its entering. Most misses so pay one read, not two.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from redis.asyncio import Redis

from storage import keys
from storage.bus.coalesce import BatchedScript

__all__ = ["DONE_TTL_S", "Entry", "Flights"]

# How long a left flight keeps its mark: longer than a job takes between its cache read and `enter`.
DONE_TTL_S = 30

# KEYS: flight, waiting. ARGV: job id, lease ms. Returns {1, 0} for the leader of an empty flight (a
# redelivered leader takes its own flight again), {2, 0} for the leader of a flight left since (read
# the cache again), else {0, ms the leader's lease has left} after counting the waiter.
_ENTER = """
local held = redis.call('GET', KEYS[1])
if not held or held == ARGV[1] or string.sub(held, 1, 5) == 'done:' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if held and held ~= ARGV[1] then return {2, 0} end
  return {1, 0}
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 1 end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], left)
return {0, left}
"""

# KEYS: flight, waiting, done channel. ARGV: job id, mark ms. Only the leader leaves; waiters are woken.
_LEAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'done:' .. ARGV[1], 'PX', ARGV[2])
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', KEYS[3], ARGV[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """The outcome of `enter`: the leader, or a waiter with the leader's lease time left."""

    leader: bool
    lease_left_s: float = 0.0
    recheck: bool = False  # the leader of a flight left since the job's cache read: read again


class Flights:
    """The fleet's flights in Redis (see the module docstring)."""

    def __init__(self, redis: Redis, *, lease_s: float) -> None:
        self.lease_s = lease_s
        self._enter = BatchedScript(redis, _ENTER)
        self._leave = BatchedScript(redis, _LEAVE)

    async def enter(self, tenant: str, flight: str, job_id: str) -> Entry:
        """Lead the flight, or wait in it (counted, so the leader's leaving wakes this job)."""
        lease_ms = max(1, int(self.lease_s * 1000))
        state, left_ms = await self._enter(
            keys=[keys.flight(tenant, flight), keys.flight_waiting(tenant, flight)], args=[job_id, lease_ms]
        )
        return Entry(bool(state), int(left_ms) / 1000, recheck=state == 2)

    def leave(self, tenant: str, flight: str, job_id: str) -> Awaitable[int]:
        """Let go of a flight this job leads (no-op otherwise), waking whoever waits; await 1 if it
        led, else 0. The script call is queued when this is called (storage/bus/coalesce.py)."""
        names = [keys.flight(tenant, flight), keys.flight_waiting(tenant, flight)]
        done = [*names, keys.flight_done_channel(tenant, flight)]
        led: Awaitable[int] = self._leave(keys=done, args=[job_id, DONE_TTL_S * 1000])
        return led
