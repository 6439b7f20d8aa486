--[[
heartbeat-4.lua: extend a live session by the pool's session length.

A heartbeat never revives an expired session and never extends a session whose number
has since been leased to someone else or taken out of the pool: the visitor record must
still exist with this session id. The record's key expires 1 ms before its lease, and
whatever takes a number away early deletes the record, so a record that exists holds a
valid lease.

KEYS[1] pool     hash: ttl_ms
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
KEYS[3] holders  hash: h:<number> counts the lease's heartbeats (see session-5.lua)
KEYS[4] visitor  hash, the session (see session-5.lua): s session_id, n number
ARGV[1] session id the client holds

Returns {"alive", number, expires_at_ms} | {"expired", false, false} |
        {"no_pool", false, false}.
Writes no stream entry. Cost: O(log n).
]]
local pool_key, numbers_key, holders_key, visitor_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local session_id = ARGV[1]

local ttl = redis.call('HGET', pool_key, 'ttl_ms')
if not ttl then
  return {'no_pool', false, false}
end
local ttl_ms = tonumber(ttl)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local cur = redis.call('HMGET', visitor_key, 's', 'n')
if cur[1] ~= session_id then
  return {'expired', false, false}
end

local expires_at = now + ttl_ms
redis.call('ZADD', numbers_key, 'XX', expires_at, cur[2])
redis.call('PEXPIREAT', visitor_key, expires_at - 1)
redis.call('HINCRBY', holders_key, 'h:' .. cur[2], 1)
return {'alive', cur[2], expires_at}
