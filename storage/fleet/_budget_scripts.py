"""The Lua scripts of `storage.fleet.budgets`: reserve, release, settle and rebuild, each one atomic.

Money is integer micro-dollars (Lua's doubles add them exactly up to 2^53). The budget keys are
built inside the scripts from the scopes and period counters a hold names (one Redis, not a
cluster: the scripts may touch keys they were not passed).
"""

from __future__ import annotations

__all__ = ["LUA_DROP", "LUA_HOLD", "REBUILD", "REBUILD_PERIODS", "RELEASE", "RESERVE", "SETTLE"]

# Drops one hold: its amount leaves `reserved` in each of its scopes and, when settling, the real
# cost joins `spent`. The budget keys are built from the scopes the hold names (one Redis, not a
# cluster: the scripts may touch keys they were not passed).
LUA_DROP = """
local function drop(holds, open, job, field, prefix, cost)
  local hold = redis.call('HGET', holds, field)
  if not hold then return 0 end
  local h = cjson.decode(hold)
  local minus = string.format('%d', -h.amount_micro)
  for _, scope in ipairs(h.scopes) do
    redis.call('HINCRBY', prefix .. scope, 'reserved', minus)
    if cost then redis.call('HINCRBY', prefix .. scope, 'spent', cost) end
  end
  -- The period counters of when the hold was taken: the call counts in that period, even once the
  -- next one has begun. A counter already expired is not made again (it would never expire); one
  -- EXISTS for them all finds the usual case, every one still there.
  local counters = {}
  for i, counter in ipairs(h.periods or {}) do counters[i] = prefix .. counter end
  local all = #counters == 0 or redis.call('EXISTS', unpack(counters)) == #counters
  for _, key in ipairs(counters) do
    if all or redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'reserved', minus)
      if cost then redis.call('HINCRBY', key, 'spent', cost) end
    end
  end
  redis.call('HDEL', holds, field)
  -- The job holds nothing any more: it leaves the index the sweeper reads.
  if redis.call('EXISTS', holds) == 0 then redis.call('ZREM', open, job) end
  return 1
end
"""

# A hold's three steps, its keys from KEYS[ko + 1] and its arguments from ARGV[ao + 1] (RESERVE's,
# below, at offsets 0; a script that takes a hold with something else passes them after its own:
# storage.fleet.state's admission with its hold). held: the attempt has its hold already.
# hold_refusal: the refusing cap, or nil (reads only). hold_take: adds the hold everywhere.
LUA_HOLD = """
local function held(ko, ao)
  return redis.call('HEXISTS', KEYS[ko + 2], ARGV[ao + 1]) == 1
end

local function hold_refusal(ko, ao)
  local caps, amount = KEYS[ko + 1], tonumber(ARGV[ao + 2])
  for s = 0, (#KEYS - ko - 6) / 4 - 1 do
    local name, first = ARGV[ao + 9 + s * 2], ko + 7 + s * 4
    for p = 0, 3 do
      local cap
      if p == 0 then
        cap = redis.call('HGET', caps, name) or ARGV[ao + 10 + s * 2]
      else
        cap = redis.call('HGET', KEYS[ko + 3 + p], name) or ''
      end
      if cap ~= '' then
        local v = redis.call('HMGET', KEYS[first + p], 'spent', 'reserved')
        local spent, reserved = tonumber(v[1] or '0'), tonumber(v[2] or '0')
        if spent + reserved + amount > tonumber(cap) then
          return {name, string.format('%d', spent), string.format('%d', reserved), cap, p}
        end
      end
    end
  end
  return nil
end

local function hold_take(ko, ao)
  local amount = tonumber(ARGV[ao + 2])
  for s = 0, (#KEYS - ko - 6) / 4 - 1 do
    local first = ko + 7 + s * 4
    redis.call('HINCRBY', KEYS[first], 'reserved', ARGV[ao + 2])
    for p = 1, 3 do
      -- A period counter's life is set when this hold is all it holds (new, or nothing reserved
      -- since): a counter with holds in it got its TTL with the first of them.
      if redis.call('HINCRBY', KEYS[first + p], 'reserved', ARGV[ao + 2]) == amount then
        redis.call('EXPIRE', KEYS[first + p], ARGV[ao + 5 + p])
      end
    end
  end
  redis.call('HSET', KEYS[ko + 2], ARGV[ao + 1], ARGV[ao + 3])
  redis.call('ZADD', KEYS[ko + 3], 'NX', ARGV[ao + 5], ARGV[ao + 4])  -- scored by the job's oldest hold
end
"""

# KEYS: [1] lifetime caps hash, [2] the job's holds hash, [3] the open-holds index, [4..6] the daily,
# weekly and monthly caps hashes, then per scope four counters: lifetime, this day's, this week's,
# this month's. ARGV: [1] hold field, [2] amount (micro-dollars), [3] hold JSON, [4] job id, [5]
# time, [6..8] how long this day's, week's and month's counters live (s: until the period's end and
# its grace, by this process's clock, which Redis's need not match), then per scope: name,
# default lifetime cap in micro-dollars ('' = no cap). Every cap of every scope must have room, or
# nothing is taken (keys must be the last passed: the scopes are counted from #KEYS). Returns 1
# (held), 0 (already held) or the refusing cap's {scope name, spent, reserved, cap, period index: 0
# lifetime, 1 daily, 2 weekly, 3 monthly}.
RESERVE = (
    LUA_HOLD
    + """
if held(0, 0) then return 0 end
local refused = hold_refusal(0, 0)
if refused then return refused end
hold_take(0, 0)
return 1
"""
)

# KEYS: [1] the job's holds hash, [2] the open-holds index. ARGV: [1] hold field, [2] budget key
# prefix, [3] job id.
RELEASE = (
    LUA_DROP
    + """
return drop(KEYS[1], KEYS[2], ARGV[3], ARGV[1], ARGV[2], nil)
"""
)

# KEYS: [1] the job's holds hash, [2] the open-holds index. ARGV: [1] budget key prefix, [2] job
# id, then pairs: hold field, real cost (micro-dollars). Returns how many holds were settled (those
# already gone are skipped).
SETTLE = (
    LUA_DROP
    + """
local settled = 0
for i = 3, #ARGV, 2 do
  settled = settled + drop(KEYS[1], KEYS[2], ARGV[2], ARGV[i], ARGV[1], ARGV[i + 1])
end
return settled
"""
)

# KEYS: holds hashes (found by SCAN). ARGV: [1] budget key prefix, then pairs: scope, spent
# (micro-dollars). Sets every scope's spent and, from the holds present now, its reserved; a scope
# only a hold names gets spent 0. Returns the scopes written.
REBUILD = """
local prefix = ARGV[1]
local spent, reserved, order = {}, {}, {}
for i = 2, #ARGV, 2 do
  spent[ARGV[i]] = ARGV[i + 1]
  order[#order + 1] = ARGV[i]
end
for _, holds in ipairs(KEYS) do
  for _, hold in ipairs(redis.call('HVALS', holds)) do
    local h = cjson.decode(hold)
    for _, scope in ipairs(h.scopes) do
      if not spent[scope] then
        spent[scope] = '0'
        order[#order + 1] = scope
      end
      reserved[scope] = (reserved[scope] or 0) + h.amount_micro
    end
  end
end
for _, scope in ipairs(order) do
  redis.call('HSET', prefix .. scope, 'spent', spent[scope],
    'reserved', string.format('%d', reserved[scope] or 0))
end
return order
"""

# KEYS: holds hashes (found by SCAN). ARGV: [1] budget key prefix, [2..4] the suffixes of the current
# day's, week's and month's counters (`:daily:2026-11-30`), [5..7] how long each lives (s), then
# triples: counter, spent (micro-dollars), period index (1 daily, 2 weekly, 3 monthly). Sets each
# counter's spent and, from the holds present now that name it, its reserved; a current counter only
# a hold names gets spent 0; counters of past periods are left alone. Returns the counters written.
REBUILD_PERIODS = """
local prefix = ARGV[1]
local spent, reserved, period, order = {}, {}, {}, {}
for i = 8, #ARGV, 3 do
  spent[ARGV[i]] = ARGV[i + 1]
  period[ARGV[i]] = tonumber(ARGV[i + 2])
  order[#order + 1] = ARGV[i]
end
local function current(counter)
  for p = 1, 3 do
    local suffix = ARGV[1 + p]
    if string.sub(counter, -#suffix) == suffix then return p end
  end
  return nil
end
for _, holds in ipairs(KEYS) do
  for _, hold in ipairs(redis.call('HVALS', holds)) do
    local h = cjson.decode(hold)
    for _, counter in ipairs(h.periods or {}) do
      local p = current(counter)
      if p then
        if not spent[counter] then
          spent[counter], period[counter] = '0', p
          order[#order + 1] = counter
        end
        reserved[counter] = (reserved[counter] or 0) + h.amount_micro
      end
    end
  end
end
for _, counter in ipairs(order) do
  redis.call('HSET', prefix .. counter, 'spent', spent[counter],
    'reserved', string.format('%d', reserved[counter] or 0))
  redis.call('EXPIRE', prefix .. counter, ARGV[4 + period[counter]])
end
return order
"""
