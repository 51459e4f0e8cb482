"""`RedisFleetState`: the `FleetState` of a fleet, so every worker sees one breaker and one set of limits.

Same rules as `router_core.fleet.InMemoryFleetState` (read its docstring for the breaker), kept in Redis
(keys in `storage.keys`):

    routeq:dep:<id>            hash  success_rate, latency_ms, calls        live stats (EWMA)
                                     forced, opened_at, cooldown_s          override and breaker
                                     w0..w20 = "<bucket>:<ok>:<failed>"     breaker's failure window
                                     probe:<ticket>                         a half-open probe in flight
                                     rate_window_s, tokens, seq             window, its token total, tickets
                                     hop_s                                  claim to admission (EWMA)
                                     held_ms                                latest arrival to answer (EWMA)
    routeq:dep:<id>:inflight   zset  ticket -> lease expiry                 max_concurrency, probes
    routeq:dep:<id>:requests   zset  ticket -> latest arrival at the       rpm (exact sliding log)
                                     provider (in flight: admission + lease,
                                     i.e. still counted)
    routeq:dep:<id>:tokens     hash  ticket -> tokens counted for tpm       tpm (estimate, then real usage)

Why each operation is one Lua script: `admit` checks and takes (a probe slot, a concurrency slot, a
request and its tokens) in one step; split into commands, two workers could both see the last free
slot and both take it, multiplying every limit by the size of the fleet. `release` reads the
breaker state and writes the outcome that may open or close it, which is a read-modify-write too.
`snapshot` prunes expired entries before counting, `force` sets the override and resets the
breaker together. Each script touches the keys of one deployment (snapshot: of the ones asked for).

Bounded state. In-flight tickets are scored by lease expiry and pruned on every admit and snapshot,
so a worker killed mid-call gives its slot (and a probe slot: a probe field counts only while its
ticket is in flight) back after `lease_s`. Requests and tokens are pruned past the rate window; the
`tokens` field keeps their sum so admission never adds the whole hash up. Successes come at high
rates, so the breaker window is not a log but a ring of 21 buckets of window_s/20, each holding its
bucket number and counts: a call counts while its bucket overlaps the window, i.e. for window_s plus
at most one bucket (window_s/20), and the state hash stays the same size whatever the traffic.

Time: with no `clock`, the scripts read the Redis server's `TIME`, so machines whose clocks
disagree still agree on windows, leases and cooldowns. Tests pass a `FakeClock` instead. The
cooldown is stored when a circuit opens, so a reader with other settings (the CLI, a worker being
reconfigured) still sees when it half-opens; the members of a fleet should share one
`BreakerPolicy` all the same (workers read it from the same settings).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from router_core.catalog import Deployment
from router_core.clock import Clock
from router_core.fleet import (
    ARRIVAL_MARGIN_S,
    CONCURRENCY_RETRY_S,
    Admission,
    BreakerPolicy,
    CallOutcome,
    CircuitState,
    DeploymentSnapshot,
    Forced,
    Refusal,
    SpendHold,
    admit_holding,
)
from storage import keys
from storage.bus.coalesce import BatchedScript
from storage.connections import as_text
from storage.fleet._budget_scripts import LUA_HOLD
from storage.settings import Settings

if TYPE_CHECKING:
    from storage.fleet.budgets import ScriptHold

__all__ = ["LUA_COMMON", "RedisFleetState"]

# Shared by every script (and storage.fleet.line's). ARGV[1] is the time: a clock's reading, or
# negative for the server's TIME.
# Numbers handed to redis.call are formatted with %.17g, which round-trips a double exactly.
LUA_COMMON = """
local CHUNK = 500
local BUCKETS = 20
local SLOTS = BUCKETS + 1
local function num(x) return string.format('%.17g', x) end
local function clock(arg)
  local now = tonumber(arg)
  if now < 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  return now
end
-- Seconds until a rate window (`requests`: ticket -> admission time, `tokens`: ticket -> tokens)
-- frees `excess` tokens: the oldest entries leave it first.
local function tokens_free_in(requests, tokens, window, now, excess)
  local start = 0
  while true do
    local batch = redis.call('ZRANGE', requests, start, start + CHUNK - 1, 'WITHSCORES')
    if #batch == 0 then return window end
    local names = {}
    for i = 1, #batch, 2 do names[#names + 1] = batch[i] end
    local counted = redis.call('HMGET', tokens, unpack(names))
    for i = 1, #names do
      excess = excess - (tonumber(counted[i]) or 0)
      if excess <= 0 then return math.min(tonumber(batch[2 * i]), now) + window - now end
    end
    start = start + CHUNK
  end
end
local function circuit(forced, opened_at, now, cooldown)
  if forced == 'down' then return 'open' end
  if forced == 'up' or not opened_at then return 'closed' end
  if now - opened_at >= cooldown then return 'half_open' end
  return 'open'
end
local function slot_names()
  local names = {}
  for i = 0, SLOTS - 1 do names[#names + 1] = 'w' .. num(i) end
  return names
end
local function clear_window(state)
  redis.call('HDEL', state, unpack(slot_names()))
end
local function prune_requests(state, requests, tokens, cutoff)
  local bound = num(cutoff)
  repeat
    local old = redis.call('ZRANGEBYSCORE', requests, '-inf', bound, 'LIMIT', 0, CHUNK)
    if #old > 0 then
      local counted = redis.call('HMGET', tokens, unpack(old))
      local sum = 0
      for i = 1, #old do sum = sum + (tonumber(counted[i]) or 0) end
      redis.call('HDEL', tokens, unpack(old))
      redis.call('ZREM', requests, unpack(old))
      if sum ~= 0 then redis.call('HINCRBY', state, 'tokens', num(-sum)) end
    end
  until #old < CHUNK
  -- With no request left the total must be 0: heal any drift rather than carry it forever.
  if redis.call('ZCARD', requests) == 0 then
    redis.call('DEL', tokens)
    redis.call('HSET', state, 'tokens', '0')
  end
end
"""

# KEYS: state, inflight, requests, tokens, claims (storage.fleet.line).
# ARGV: now, tokens wanted, rate_window_s, max_concurrency, rpm, tpm ('' = no limit), cooldown_s,
#       probes, lease_s, retry after a full concurrency or probe budget, the job admitted ('' = none:
#       its claim on a slot, if it holds one, ends when admitted).
# Returns {'admitted', ticket, probe 0|1} or {'refused', reason, retry_after_s or ''}.
_ADMIT_CALL = """
local state, inflight, requests, tokens, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, want, window = clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_concurrency, rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local cooldown, probes, lease, busy_retry = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local waiter = ARGV[11]

local function live_probes()
  local fields = redis.call('HKEYS', state)
  local live = 0
  for _, name in ipairs(fields) do
    if string.sub(name, 1, 6) == 'probe:' then
      if redis.call('ZSCORE', inflight, string.sub(name, 7)) then
        live = live + 1
      else
        redis.call('HDEL', state, name)  -- its lease ran out: the worker died mid-probe
      end
    end
  end
  return live
end

redis.call('HSET', state, 'rate_window_s', num(window))
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', num(now))
prune_requests(state, requests, tokens, now - window)
local f = redis.call('HMGET', state, 'forced', 'opened_at', 'tokens', 'cooldown_s')
local forced, opened_at, counted = f[1], tonumber(f[2]), tonumber(f[3]) or 0
cooldown = tonumber(f[4]) or cooldown  -- the cooldown of the worker that opened the circuit
if forced == 'down' then return {'refused', 'forced_down', ''} end
local c = circuit(forced, opened_at, now, cooldown)
if c == 'open' then return {'refused', 'circuit_open', num(opened_at + cooldown - now)} end
if c == 'half_open' and live_probes() >= probes then return {'refused', 'circuit_open', busy_retry} end
if max_concurrency and redis.call('ZCARD', inflight) >= max_concurrency then
  return {'refused', 'concurrency', busy_retry}
end
if rpm and redis.call('ZCARD', requests) >= rpm then
  -- A call in flight (scored in the future) leaves the window no sooner than a window from now.
  local oldest = redis.call('ZRANGE', requests, 0, 0, 'WITHSCORES')
  return {'refused', 'rpm', num(math.min(tonumber(oldest[2]), now) + window - now)}
end
if tpm and counted + want > tpm then
  return {'refused', 'tpm', num(tokens_free_in(requests, tokens, window, now, counted + want - tpm))}
end
local ticket = 't' .. num(redis.call('HINCRBY', state, 'seq', 1))
redis.call('ZADD', inflight, num(now + lease), ticket)
-- Counted until a window after its release (scored then); until that, as long as its lease.
redis.call('ZADD', requests, num(now + lease), ticket)
redis.call('HSET', tokens, ticket, num(want))
if want ~= 0 then redis.call('HINCRBY', state, 'tokens', num(want)) end
if waiter ~= '' then
  -- The hop from a job finding room (its claim) to this admission, as an EWMA: the waiting line
  -- expects a freed slot to be taken again this long after it frees.
  local found = tonumber(redis.call('ZSCORE', claims, waiter))
  if found then
    local hop, prev = now - found, tonumber(redis.call('HGET', state, 'hop_s'))
    if prev then hop = prev + 0.2 * (hop - prev) end
    redis.call('HSET', state, 'hop_s', num(hop))
    redis.call('ZREM', claims, waiter)
  end
end
if c == 'half_open' then
  redis.call('HSET', state, 'probe:' .. ticket, '1')
  return {'admitted', ticket, '1'}
end
return {'admitted', ticket, '0'}
"""
_ADMIT = LUA_COMMON + _ADMIT_CALL

# _ADMIT's keys and arguments (_ADMIT_KEYS, _ADMIT_ARGS of them), then a budget hold's
# (storage.fleet._budget_scripts.LUA_HOLD). The call is admitted only if the hold's caps have room
# too, and the hold is taken only if it is admitted (one already taken, a re-run's, stands). Returns
# _ADMIT's answer, or {'spend', the refusing cap (LUA_HOLD's hold_refusal)}.
_ADMIT_KEYS, _ADMIT_ARGS = 5, 11
_ADMIT_HOLDING = (
    LUA_COMMON
    + LUA_HOLD
    + "local function admit()\n"
    + _ADMIT_CALL
    + f"""end

local had = held({_ADMIT_KEYS}, {_ADMIT_ARGS})
if not had then
  local refused = hold_refusal({_ADMIT_KEYS}, {_ADMIT_ARGS})
  if refused then return {{'spend', refused}} end
end
local answer = admit()
if answer[1] == 'admitted' and not had then hold_take({_ADMIT_KEYS}, {_ADMIT_ARGS}) end
return answer
"""
)

# KEYS: state, inflight, tokens, requests.
# ARGV: now, ticket, probe 0|1, outcome, latency_ms, real tokens ('' = keep the estimate), alpha,
#       cooldown_s, window_s, failure_threshold, min_failure_ratio, answered 1|0, arrival margin (s),
#       the provider's reported hold (s, '' = none or not trusted).
_RELEASE = (
    LUA_COMMON
    + """
local state, inflight, tokens, requests = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, ticket, probe, outcome = clock(ARGV[1]), ARGV[2], ARGV[3] == '1', ARGV[4]
local latency, used, alpha = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cooldown, window = tonumber(ARGV[8]), tonumber(ARGV[9])
local threshold, min_ratio = tonumber(ARGV[10]), tonumber(ARGV[11])
local answered, arrival_margin, server = ARGV[12] == '1', tonumber(ARGV[13]), tonumber(ARGV[14])

local function parse(raw)
  if not raw then return nil, 0, 0 end
  local b, s, f = string.match(raw, '^([^:]+):(%d+):(%d+)$')
  return tonumber(b), tonumber(s) or 0, tonumber(f) or 0
end

local function record(bucket, ok)
  local slot = 'w' .. num(bucket % SLOTS)
  local b, s, f = parse(redis.call('HGET', state, slot))
  if b ~= bucket then s, f = 0, 0 end
  if ok then s = s + 1 else f = f + 1 end
  redis.call('HSET', state, slot, num(bucket) .. ':' .. num(s) .. ':' .. num(f))
end

local function tripped(bucket)
  local raw = redis.call('HMGET', state, unpack(slot_names()))
  local failures, total = 0, 0
  for i = 1, SLOTS do
    local b, s, f = parse(raw[i])
    if b and b > bucket - SLOTS and b <= bucket then
      failures = failures + f
      total = total + s + f
    end
  end
  return total > 0 and failures >= threshold and failures / total >= min_ratio
end

redis.call('ZREM', inflight, ticket)
redis.call('HDEL', state, 'probe:' .. ticket)
-- Scored at the latest moment the provider can have counted it (router_core.fleet.counted_until):
-- it leaves the rate window a window after that. An answered call arrived before its answer, less
-- the time the provider says it held it when it says (never before the call's start; no margin).
local started = now - (latency or 0) / 1000
local arrived_by = started + arrival_margin
if answered and server then
  arrived_by = math.max(now - server, started)
elseif answered then
  arrived_by = math.min(now, arrived_by)
end
redis.call('ZADD', requests, 'XX', num(arrived_by), ticket)
if used then
  local counted = tonumber(redis.call('HGET', tokens, ticket))
  if counted then  -- not yet out of the window
    redis.call('HSET', tokens, ticket, num(used))
    if used ~= counted then redis.call('HINCRBY', state, 'tokens', num(used - counted)) end
  end
end
redis.call('HINCRBY', state, 'calls', 1)
if outcome == 'neutral' then return 0 end

local ok = outcome == 'success'
local f = redis.call('HMGET', state, 'success_rate', 'latency_ms', 'forced', 'opened_at', 'cooldown_s',
  'held_ms')
local rate = tonumber(f[1]) or 1.0
rate = rate + alpha * ((ok and 1.0 or 0.0) - rate)
redis.call('HSET', state, 'success_rate', num(rate))
if ok and latency then
  -- With the latency, the part of it after the latest arrival (the provider's reported hold, or
  -- past the margin): a slot is taken again a window after the latency less this (storage.fleet.line).
  local held, prev, prev_held = (now - arrived_by) * 1000, tonumber(f[2]), tonumber(f[6])
  if prev then latency = prev + alpha * (latency - prev) end
  if prev_held then held = prev_held + alpha * (held - prev_held) end
  redis.call('HSET', state, 'latency_ms', num(latency), 'held_ms', num(held))
end
local forced, opened_at = f[3], tonumber(f[4])
local c = circuit(forced, opened_at, now, tonumber(f[5]) or cooldown)
if probe and c == 'half_open' then
  if ok then
    redis.call('HDEL', state, 'opened_at', 'cooldown_s')
  else
    redis.call('HSET', state, 'opened_at', num(now), 'cooldown_s', num(cooldown))
  end
  clear_window(state)
  return 0
end
local bucket = math.floor(now / (window / BUCKETS))
record(bucket, ok)
if not ok and c == 'closed' and not forced and tripped(bucket) then
  -- The cooldown is stored with the opening, so every reader agrees when it half-opens.
  redis.call('HSET', state, 'opened_at', num(now), 'cooldown_s', num(cooldown))
  clear_window(state)
end
return 0
"""
)

# KEYS: state, inflight, requests, tokens of each deployment in turn. ARGV: now, cooldown_s.
# Returns per deployment {} when it has no state, else {success_rate, latency_ms, calls, forced,
# circuit, in_flight, requests, tokens} as strings ('' = unset).
_SNAPSHOT = (
    LUA_COMMON
    + """
local now, cooldown = clock(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS, 4 do
  local state, inflight, requests, tokens = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
  if redis.call('EXISTS', state) == 0 then
    out[#out + 1] = {}
  else
    local f = redis.call('HMGET', state, 'success_rate', 'latency_ms', 'calls', 'forced', 'opened_at',
      'rate_window_s', 'cooldown_s')
    redis.call('ZREMRANGEBYSCORE', inflight, '-inf', num(now))
    prune_requests(state, requests, tokens, now - (tonumber(f[6]) or 60))
    out[#out + 1] = {
      f[1] or '', f[2] or '', f[3] or '0', f[4] or '',
      circuit(f[4], tonumber(f[5]), now, tonumber(f[7]) or cooldown),
      num(redis.call('ZCARD', inflight)), num(redis.call('ZCARD', requests)),
      redis.call('HGET', state, 'tokens') or '0',
    }
  end
end
return out
"""
)

# KEYS: state. ARGV: 'down' | 'up' | '' (clear).
_FORCE = (
    LUA_COMMON
    + """
local state = KEYS[1]
if ARGV[1] == '' then
  redis.call('HDEL', state, 'forced')
else
  redis.call('HSET', state, 'forced', ARGV[1])
  redis.call('HDEL', state, 'opened_at', 'cooldown_s')  -- an override starts the breaker afresh
  clear_window(state)
end
return 0
"""
)

_SERVER_TIME = "-1"


class RedisFleetState:
    """`FleetState` shared by every worker of a fleet through one Redis.

    Args:
        redis: the fleet's Redis (any `redis.asyncio.Redis`, decoded responses or not).
        breaker: the breaker policy; the members of a fleet should share one (an open circuit's
            cooldown is stored with it, so readers agree on when it half-opens).
        clock: where time comes from; None (production) means the Redis server's clock.
        alpha: weight of the newest call in the success-rate and latency EWMAs.
        lease_s: how long an admitted call may stay in flight before its slot is taken back (a
            worker killed mid-call never releases); keep it above the longest provider timeout.
        arrival_margin_s: the longest a call may take from its start to the provider counting it
            (`ROUTEQ_RATE_LIMIT_MARGIN_S`). A call counts from its admission until a window after
            the latest moment it can have arrived: its answer less the time the provider says it
            held it, when it says (no margin then); else its answer, or its start plus this margin
            if that is sooner (or it was not answered). See "Rate windows" in `router_core.fleet`.
        trust_processing_time: believe the providers' reported hold (`release(server_s=...)`);
            False (`ROUTEQ_TRUST_PROCESSING_TIME=false`) counts calls as if no provider reported one.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        breaker: BreakerPolicy | None = None,
        clock: Clock | None = None,
        alpha: float = 0.2,
        lease_s: float = 300.0,
        arrival_margin_s: float = ARRIVAL_MARGIN_S,
        trust_processing_time: bool = True,
    ) -> None:
        self._redis = redis
        self._arrival_margin_s = arrival_margin_s
        self._trust_processing_time = trust_processing_time
        self.breaker = breaker or BreakerPolicy()
        self._clock = clock
        self._alpha = alpha
        self._lease_s = lease_s
        self._admit = BatchedScript(redis, _ADMIT)
        self._admit_holding = BatchedScript(redis, _ADMIT_HOLDING)
        self._release = BatchedScript(redis, _RELEASE)
        self._snapshot = BatchedScript(redis, _SNAPSHOT)
        self._reading: dict[tuple[str, ...], asyncio.Future[Mapping[str, DeploymentSnapshot]]] = {}
        self._force = redis.register_script(_FORCE)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RedisFleetState:
        """A worker's: the breaker, rate-limit margin and trust in providers' reported holds the
        settings give; a lease past twice the default timeout, plus a minute."""
        return cls(
            redis,
            breaker=settings.breaker_policy(),
            lease_s=settings.default_timeout_ms / 1000 * 2 + 60,
            arrival_margin_s=settings.rate_limit_margin_s,
            trust_processing_time=settings.trust_processing_time,
        )

    def _now(self) -> str:
        return _SERVER_TIME if self._clock is None else repr(float(self._clock.now()))

    async def snapshot(self, deployment_ids: Sequence[str]) -> Mapping[str, DeploymentSnapshot]:
        """Live stats of each deployment, after dropping expired leases and requests.

        Callers asking for the same deployments while a read is on its way share it (a worker plans
        every job it starts: hundreds of the same read a second, each a script call and a parse of
        its reply): they get what a read sent a moment later would give. The mapping is shared:
        read it, do not change it.
        """
        if not deployment_ids:
            return {}
        now = self._now()
        ids = (now, *deployment_ids)  # a fake clock's reads share only with reads at the same time
        reading = self._reading.get(ids)
        if reading is None:
            reading = self._reading[ids] = asyncio.ensure_future(self._read_snapshot(now, ids[1:]))
            reading.add_done_callback(lambda _: self._reading.pop(ids, None))
        return await asyncio.shield(reading)  # one caller cancelled does not cancel the others' read

    async def _read_snapshot(
        self, now: str, deployment_ids: Sequence[str]
    ) -> Mapping[str, DeploymentSnapshot]:
        script_keys = [key for dep in deployment_ids for key in _deployment_keys(dep)]
        reply: list[list[Any]] = await self._snapshot(
            keys=script_keys, args=[now, _arg(self.breaker.cooldown_s)]
        )
        return {dep: _deployment_snapshot(row) for dep, row in zip(deployment_ids, reply, strict=True)}

    async def admit(
        self, deployment: Deployment, tokens: int, *, waiter: str | None = None, hold: SpendHold | None = None
    ) -> Admission:
        """Atomically check and take what one call needs; `tokens` is the worst-case estimate.

        An admitted `waiter` (a job id) gives up its claim on a slot (`storage.fleet.line`) in the
        same step. A `hold` whose guard can say it as script keys (`JobSpendGuard.script_hold`) is
        checked and taken in the same script, one round trip; another guard's is reserved first
        (`admit_holding`).
        """
        script_hold = getattr(hold.guard, "script_hold", None) if hold is not None else None
        spend: ScriptHold | None = None
        if hold is not None and script_hold is not None:
            spend = script_hold(hold.attempt_no, hold.deployment_id, hold.amount_usd)
        if hold is not None and spend is None:
            return await admit_holding(lambda: self.admit(deployment, tokens, waiter=waiter), hold)
        state, inflight, requests, token_counts = _deployment_keys(deployment.id)
        args = [
            self._now(),
            _arg(tokens),
            _arg(deployment.rate_window_s),
            _arg(deployment.max_concurrency),
            _arg(deployment.rpm),
            _arg(deployment.tpm),
            _arg(self.breaker.cooldown_s),
            _arg(self.breaker.probes),
            _arg(self._lease_s),
            _arg(CONCURRENCY_RETRY_S),
            waiter or "",
        ]
        script_keys = [state, inflight, requests, token_counts, keys.deployment_claims(deployment.id)]
        if spend is None:
            reply: list[Any] = await self._admit(keys=script_keys, args=args)
        else:
            assert (len(script_keys), len(args)) == (_ADMIT_KEYS, _ADMIT_ARGS), "the hold's offsets moved"
            reply = await self._admit_holding(keys=script_keys + spend.keys, args=args + spend.args)
            if as_text(reply[0]) == "spend":
                return Admission(None, spend_refusal=spend.refusal(reply[1]))
        status, value, extra = (as_text(v) for v in reply)
        if status == "admitted":
            return Admission(value, probe=extra == "1")
        return Admission(None, Refusal(value), float(extra) if extra else None)

    async def release(
        self,
        deployment: Deployment,
        admission: Admission,
        outcome: CallOutcome,
        latency_ms: float | None,
        tokens: int | None,
        *,
        answered: bool = True,
        server_s: float | None = None,
    ) -> None:
        """End an admitted call; `tokens` is the real usage (None keeps the estimate).

        `answered`: the provider replied, so the call arrived before now; `server_s`: it says it
        held the call this long after counting it, so it arrived that long before now (when
        trusted; `router_core.fleet`).
        """
        if admission.ticket is None:
            return
        state, inflight, requests, token_counts = _deployment_keys(deployment.id)
        policy = self.breaker
        args = [
            self._now(),
            admission.ticket,
            "1" if admission.probe else "0",
            outcome.value,
            _arg(latency_ms),
            _arg(tokens),
            _arg(self._alpha),
            _arg(policy.cooldown_s),
            _arg(policy.window_s),
            _arg(policy.failure_threshold),
            _arg(policy.min_failure_ratio),
            "1" if answered else "0",
            _arg(self._arrival_margin_s),
            _arg(server_s if self._trust_processing_time else None),
        ]
        await self._release(keys=[state, inflight, token_counts, requests], args=args)

    async def force(self, deployment_id: str, state: Forced | None) -> None:
        """Force a deployment down or up, fleet-wide, until `force(id, None)` clears it."""
        await self._force(keys=[keys.deployment(deployment_id)], args=[state.value if state else ""])

    async def next_rotation(self, key: str) -> int:
        """0, 1, 2... per key, counted across the fleet."""
        # redis-py types hash commands as sync-or-async; on an asyncio client they are awaitable.
        value: int = await self._redis.hincrby(keys.ROTATION, key, 1)  # type: ignore[misc]
        return value - 1


def _deployment_keys(deployment_id: str) -> tuple[str, str, str, str]:
    return (
        keys.deployment(deployment_id),
        keys.deployment_inflight(deployment_id),
        keys.deployment_requests(deployment_id),
        keys.deployment_tokens(deployment_id),
    )


def _arg(value: float | None) -> str:
    """A script argument: '' for None, an int as is, a float in its exact shortest form."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


def _deployment_snapshot(row: list[Any]) -> DeploymentSnapshot:
    if not row:
        return DeploymentSnapshot()
    rate, latency, calls, forced, circuit, in_flight, requests, tokens = (as_text(v) for v in row)
    return DeploymentSnapshot(
        success_rate=float(rate) if rate else 1.0,
        latency_ewma_ms=float(latency) if latency else None,
        in_flight=int(in_flight),
        circuit=CircuitState(circuit),
        calls=int(calls),
        forced=Forced(forced) if forced else None,
        requests_in_window=int(requests),
        tokens_in_window=int(tokens),
    )
