-- wrk's script for bench/api.py --caller wrk: POSTs Chat Completions bodies, each prompt its own
-- (the response cache answers none of them), and checks every answer is the sim's chat completion.
-- WRK_SECRET: the API key; WRK_OVER: names the server and round in each prompt.
-- `request` and `response` run in each wrk thread's Lua state, `done` in another: the threads'
-- counts (globals) are read through the handles `setup` kept.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

secret = os.getenv("WRK_SECRET")
over = os.getenv("WRK_OVER")
sent = 0
bad = 0
first_bad = ""
-- The answers' Server-Timing headers (producer/api/timing.py), as they came: `done` reads the
-- threads' globals through wrk's copies, which hold a flat table but fail on a table of tables.
timings = {}

function request()
  sent = sent + 1
  local body = '{"model":"auto","messages":[{"role":"user","content":"Say hello '
    .. sent .. " over " .. over .. '"}]}'
  local headers = { ["Authorization"] = "Bearer " .. secret, ["Content-Type"] = "application/json" }
  return wrk.format("POST", "/v1/chat/completions", headers, body)
end

function response(status, headers, body)
  local ok = status == 200
    and string.find(body, '"chat.completion"', 1, true)
    and string.find(body, "[simulated ", 1, true)
  local timing = headers["server-timing"] or headers["Server-Timing"]
  if ok and timing then
    table.insert(timings, timing)
  end
  if not ok then
    bad = bad + 1
    if first_bad == "" then
      first_bad = status .. " " .. string.sub(body, 1, 200)
    end
  end
end

local function median(values)
  table.sort(values)
  local n = #values
  if n % 2 == 1 then
    return values[(n + 1) / 2]
  end
  return (values[n / 2] + values[n / 2 + 1]) / 2
end

function done(summary, latency, requests)
  local failed, first = 0, ""
  local all, names = {}, {}
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("bad")
    if first == "" then
      first = thread:get("first_bad")
    end
    for _, line in ipairs(thread:get("timings")) do
      for name, ms in string.gmatch(line, "([%w_]+);dur=([%d%.]+)") do
        if all[name] == nil then
          all[name] = {}
          table.insert(names, name)
        end
        table.insert(all[name], tonumber(ms))
      end
    end
  end
  local medians = {}
  for _, name in ipairs(names) do
    table.insert(medians, string.format("%s=%.3f", name, median(all[name])))
  end
  if #medians > 0 then
    io.write("routeq-wrk-steps " .. table.concat(medians, " ") .. "\n")
  end
  local errors = summary.errors
  io.write(string.format(
    "routeq-wrk requests=%d duration_us=%d bad=%d socket_errors=%d p50_us=%d p95_us=%d first_bad=%s\n",
    summary.requests, summary.duration, failed, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), first
  ))
end
