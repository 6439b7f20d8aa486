--[[
heartbeat-4.lua: extend a live session by the pool's session length.

A heartbeat never revives an expired session and never extends a session whose number
has since been leased to someone else or taken out of the pool: the session must still
exist (key TTL), its lease must be the number's current holder, and the lease must not
have run out (score > now).

KEYS[1] pool     hash: ttl_ms
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
KEYS[3] holders  hash: number -> "session_id|visitor_id|started_ms"
KEYS[4] visitor  hash (key TTL = session expiry): s, n, t, h, attribution
ARGV[1] session id the client holds
ARGV[2] visitor id

Returns {"alive", number, expires_at_ms} | {"expired", false, false} |
        {"no_pool", false, false}.
Writes no stream entry. Cost: O(log n).
]]
local pool_key, numbers_key, holders_key, visitor_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local session_id = ARGV[1]
local visitor_id = ARGV[2]

local ttl = redis.call('HGET', pool_key, 'ttl_ms')
if not ttl then
  return {'no_pool', false, false}
end
local ttl_ms = tonumber(ttl)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local cur = redis.call('HMGET', visitor_key, 's', 'n', 't')
if cur[1] ~= session_id then
  return {'expired', false, false}
end
local score = redis.call('ZSCORE', numbers_key, cur[2])
local lease = cur[1] .. '|' .. visitor_id .. '|' .. cur[3]
if not score or tonumber(score) <= now or redis.call('HGET', holders_key, cur[2]) ~= lease then
  redis.call('DEL', visitor_key)
  return {'expired', false, false}
end

local expires_at = now + ttl_ms
redis.call('ZADD', numbers_key, 'XX', expires_at, cur[2])
redis.call('PEXPIRE', visitor_key, ttl_ms)
redis.call('HINCRBY', visitor_key, 'h', 1)
return {'alive', cur[2], expires_at}
