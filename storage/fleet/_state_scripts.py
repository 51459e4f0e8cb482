"""The Lua scripts of `storage.fleet.state`: admit, release, snapshot and force, each one atomic.

Each deployment's state is a hash, a sorted set of calls in flight, one of requests in the rate
window and a hash of their tokens (`storage.fleet.state._deployment_keys`). `ADMIT_HOLDING` and
`RELEASE_GIVING_BACK` also take or drop a call's budget hold (`storage.fleet._budget_scripts`) in
the same step.
"""

from __future__ import annotations

from storage.fleet._budget_scripts import LUA_DROP, LUA_HOLD

__all__ = [
    "ADMIT",
    "ADMIT_ARGS",
    "ADMIT_HOLDING",
    "ADMIT_KEYS",
    "FORCE",
    "LUA_COMMON",
    "RELEASE",
    "RELEASE_ARGS",
    "RELEASE_GIVING_BACK",
    "RELEASE_KEYS",
    "SNAPSHOT",
]

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
ADMIT_CALL = """
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
ADMIT = LUA_COMMON + ADMIT_CALL

# _ADMIT's keys and arguments (ADMIT_KEYS, ADMIT_ARGS of them), then a budget hold's
# (storage.fleet._budget_scripts.LUA_HOLD). The call is admitted only if the hold's caps have room
# too, and the hold is taken only if it is admitted (one already taken, a re-run's, stands). Returns
# _ADMIT's answer, or {'spend', the refusing cap (LUA_HOLD's hold_refusal)}.
ADMIT_KEYS, ADMIT_ARGS = 5, 11
ADMIT_HOLDING = (
    LUA_COMMON
    + LUA_HOLD
    + "local function admit()\n"
    + ADMIT_CALL
    + f"""end

local had = held({ADMIT_KEYS}, {ADMIT_ARGS})
if not had then
  local refused = hold_refusal({ADMIT_KEYS}, {ADMIT_ARGS})
  if refused then return {{'spend', refused}} end
end
local answer = admit()
if answer[1] == 'admitted' and not had then hold_take({ADMIT_KEYS}, {ADMIT_ARGS}) end
return answer
"""
)

# KEYS: state, inflight, tokens, requests.
# ARGV: now, ticket, probe 0|1, outcome, latency_ms, real tokens ('' = keep the estimate), alpha,
#       cooldown_s, window_s, failure_threshold, min_failure_ratio, answered 1|0, arrival margin (s),
#       the provider's reported hold (s, '' = none or not trusted).
RELEASE_CALL = """
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
RELEASE = LUA_COMMON + RELEASE_CALL

# RELEASE's keys and arguments (RELEASE_KEYS, RELEASE_ARGS of them), then a budget hold's as the
# budget's RELEASE takes them (keys: the job's holds hash, the open-holds index; arguments: the hold
# field, the budget key prefix, the job id): a call not billed gives back its slot and its hold in
# one step (a hold already gone is skipped).
RELEASE_KEYS, RELEASE_ARGS = 4, 14
RELEASE_GIVING_BACK = (
    LUA_COMMON
    + LUA_DROP
    + "local function release()\n"
    + RELEASE_CALL
    + f"""end

release()
local k, a = {RELEASE_KEYS}, {RELEASE_ARGS}
drop(KEYS[k + 1], KEYS[k + 2], ARGV[a + 3], ARGV[a + 1], ARGV[a + 2], nil)
return 0
"""
)

# KEYS: state, inflight, requests, tokens of each deployment in turn. ARGV: now, cooldown_s.
# Returns per deployment {} when it has no state, else {success_rate, latency_ms, calls, forced,
# circuit, in_flight, requests, tokens} as strings ('' = unset).
SNAPSHOT = (
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
FORCE = (
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
