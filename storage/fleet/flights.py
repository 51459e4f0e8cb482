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
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from storage import keys

__all__ = ["Entry", "Flights"]

# KEYS: flight, waiting. ARGV: job id, lease ms. Returns {1, 0} for the leader (a redelivered leader
# takes its own flight again), else {0, ms the leader's lease has left} after counting the waiter.
_ENTER = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 1 end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], left)
return {0, left}
"""

# KEYS: flight, waiting, done channel. ARGV: job id. Only the leader leaves; waiters are woken.
_LEAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', KEYS[3], ARGV[1]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """The outcome of `enter`: the leader, or a waiter with the leader's lease time left."""

    leader: bool
    lease_left_s: float = 0.0


class Flights:
    """The fleet's flights in Redis (see the module docstring)."""

    def __init__(self, redis: Redis, *, lease_s: float) -> None:
        self.lease_s = lease_s
        self._enter = redis.register_script(_ENTER)
        self._leave = redis.register_script(_LEAVE)

    async def enter(self, tenant: str, flight: str, job_id: str) -> Entry:
        """Lead the flight, or wait in it (counted, so the leader's leaving wakes this job)."""
        lease_ms = max(1, int(self.lease_s * 1000))
        leader, left_ms = await self._enter(
            keys=[keys.flight(tenant, flight), keys.flight_waiting(tenant, flight)], args=[job_id, lease_ms]
        )
        return Entry(bool(leader), int(left_ms) / 1000)

    async def leave(self, tenant: str, flight: str, job_id: str) -> bool:
        """Let go of a flight this job leads (no-op otherwise), waking whoever waits."""
        names = [keys.flight(tenant, flight), keys.flight_waiting(tenant, flight)]
        return bool(await self._leave(keys=[*names, keys.flight_done_channel(tenant, flight)], args=[job_id]))
