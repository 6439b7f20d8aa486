--[[
pool_counts-1500.lua: read a pool's counts of the last day for its stats, in one call.

The stats (stats.py) read 1,440 per-minute buckets and the turned-away visitors of 47
spans of minutes; sent one command each, a pool cost ~1,500 round trips of the broker's
Redis connection (11 ms of broker time: 111 s for GET /v1/stats of 10,000 pools). Here
they are one call. Read-only.

KEYS[1 .. 1440]    the pool's minute buckets (dni:{P}:m:{minute}), the current minute
                   first, then each minute before it
KEYS[1441 .. 1500] the pool's turned-away HyperLogLogs (dni:{P}:b:{minute}) of the last
                   60 minutes, the current minute first
ARGV[1 .. 8]       the bucket fields to read, "peak" last (stats.FIELDS, ENDED_FIELDS)
ARGV[9]            the length, in minutes, of the busy spans (15)

Returns {hour, rest, turned_away}:
  hour         the 60 newest buckets' fields, 8 per minute, newest first ("" when absent);
  rest         the other 1,380 buckets: each field summed, "peak" their highest;
  turned_away  PFCOUNT of the 60 minutes, then of each span of ARGV[9] minutes starting
               at minute 0, 1, ..., 60 - ARGV[9] (distinct visitors over the span).
Cost: O(1500) small reads, about a millisecond.
]]
local fields = {}
for i = 1, 8 do fields[i] = ARGV[i] end
local span = tonumber(ARGV[9])

local hour = {}
for m = 1, 60 do
  local values = redis.call('HMGET', KEYS[m], unpack(fields))
  for i = 1, 8 do hour[#hour + 1] = values[i] or '' end
end

local rest = {0, 0, 0, 0, 0, 0, 0, 0}
for m = 61, 1440 do
  if redis.call('EXISTS', KEYS[m]) == 1 then
    local values = redis.call('HMGET', KEYS[m], unpack(fields))
    for i = 1, 7 do rest[i] = rest[i] + (tonumber(values[i]) or 0) end
    rest[8] = math.max(rest[8], tonumber(values[8]) or 0)
  end
end

local blocked = {}
for m = 1441, 1500 do blocked[#blocked + 1] = KEYS[m] end
local turned_away = {redis.call('PFCOUNT', unpack(blocked))}
for first = 1, 61 - span do
  turned_away[#turned_away + 1] = redis.call('PFCOUNT', unpack(blocked, first, first + span - 1))
end
return {hour, rest, turned_away}
