--[[
record_counts-5.lua: add one broker process's answer counts to a pool's per-minute
bucket, note the pool's concurrent sessions in it (peak), and detect pool pressure.

Each broker process counts its answers in memory and calls this about once a second per
pool that had traffic, so the session script itself counts nothing. The concurrent
sessions are sampled at each call; sessions only start on requests, so the peak of a
minute in which requests came is seen to within one flush interval. They are counted by
score (score > now), which misses a session refreshed past its first score until the
sidecar's next pass moves it (see session-5.lua): within one sidecar interval.

KEYS[1] pool     hash: pressure_at (epoch ms of the last sample at or over the threshold)
KEYS[2] numbers  sorted set of active numbers: number -> free-from time (epoch ms)
KEYS[3] bucket   hash of one minute: new, reused, fallback, unavailable, alive (counts),
                 peak (most concurrent sessions sampled)
KEYS[4] flush    the id of the last flush of this broker process to this pool (one key
                 per pool and process, kept a minute): a flush sent twice (the connection
                 dropped with it in flight, the client sent it again) is added once; a
                 process sends its flushes of one pool one after the other
KEYS[5] blocked  HyperLogLog of one minute: the visitors answered fallback or
                 unavailable (distinct: the snippet asks again every heartbeat_s while a
                 pool is full, and those retries are not new arrivals)
ARGV[1] bucket lifetime (seconds)
ARGV[2] pressure threshold, percent of the active numbers (80)
ARGV[3] pressure window (ms): pressure "starts" when none was seen for this long
ARGV[4] this flush's id
ARGV[5] n, the count of field, increment pairs that follow
ARGV[6 .. 5+2n] field, increment pairs
ARGV[6+2n ..] visitor ids answered fallback or unavailable in this flush

Sessions on deactivated numbers are not counted here: pressure is about the numbers
that can still be assigned.
Returns {held, numbers, started}: started is 1 when this sample begins a spell of
pressure (the caller then writes a pool.pressure stream entry), else 0; {-1, -1, 0} when
the pool does not exist (nothing written). Cost: O(log n).
]]
local pool_key, numbers_key, bucket_key, flush_key, blocked_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local bucket_ttl_s = tonumber(ARGV[1])
local threshold_pct = tonumber(ARGV[2])
local window_ms = tonumber(ARGV[3])

local prev = redis.call('HMGET', pool_key, 'ttl_ms', 'pressure_at')
if not prev[1] then
  return {-1, -1, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total = redis.call('ZCARD', numbers_key)
local held = redis.call('ZCOUNT', numbers_key, '(' .. now, '+inf')
local peak = tonumber(redis.call('HGET', bucket_key, 'peak') or '-1')
local flush_id = ARGV[4]
local last_pair = 5 + 2 * tonumber(ARGV[5])
local turned_away = 0
for i = 6, last_pair, 2 do
  if ARGV[i] == 'fallback' or ARGV[i] == 'unavailable' then
    turned_away = turned_away + tonumber(ARGV[i + 1])
  end
end
-- under pressure: most active numbers held, or none to hold and visitors turned away
local pressed = (total > 0 and held * 100 >= total * threshold_pct) or
  (total == 0 and turned_away > 0)
if redis.call('GET', flush_key) == flush_id then  -- retries come within seconds
  return {held, total, 0}  -- this flush was added already
end
redis.call('SET', flush_key, flush_id, 'EX', 60)
local started = 0
if pressed and (not prev[2] or now - tonumber(prev[2]) > window_ms) then
  started = 1
end

for i = 6, last_pair, 2 do
  redis.call('HINCRBY', bucket_key, ARGV[i], ARGV[i + 1])
end
if #ARGV > last_pair then
  for i = last_pair + 1, #ARGV, 1000 do
    redis.call('PFADD', blocked_key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('EXPIRE', blocked_key, bucket_ttl_s)
end
if held > peak then
  redis.call('HSET', bucket_key, 'peak', held)
end
redis.call('EXPIRE', bucket_key, bucket_ttl_s)
if pressed then
  redis.call('HSET', pool_key, 'pressure_at', now)
  if started == 1 then
    redis.call('HSET', pool_key, 'pressure_since', now)
  end
end
return {held, total, started}
