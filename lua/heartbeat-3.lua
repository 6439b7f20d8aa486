--[[
heartbeat-3.lua: extend a live session by the pool's session length.

A heartbeat never revives an expired session and never extends a session whose number
has since been leased to someone else or taken out of the pool: the visitor record must
still exist with this session id. The record's key expires 1 ms before its lease, and
whatever takes a number away early deletes the record, so a record that exists holds a
valid lease. The number's score in the pool's sorted set is left alone (see
session-5.lua): the lease's end is written to the record and the holders entry, O(1).

KEYS[1] pool     hash: ttl_ms
KEYS[2] holders  hash: N -> "session_id|visitor_id|started_ms|expires_ms|heartbeats"
KEYS[3] visitor  hash, the session (see session-5.lua): s session_id, n number,
                 t started_ms, h heartbeats
ARGV[1] session id the client holds
ARGV[2] visitor id (no "|")

Returns {"alive", number, expires_at_ms} | {"expired", false, false} |
        {"no_pool", false, false}.
Writes no stream entry. Cost: O(1).
]]
local pool_key, holders_key, visitor_key = KEYS[1], KEYS[2], KEYS[3]
local session_id, visitor_id = ARGV[1], ARGV[2]

local ttl = redis.call('HGET', pool_key, 'ttl_ms')
if not ttl then
  return {'no_pool', false, false}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local cur = redis.call('HMGET', visitor_key, 's', 'n', 't', 'h')
if cur[1] ~= session_id then
  return {'expired', false, false}
end

local expires_at = now + tonumber(ttl)
local beats = tonumber(cur[4] or 0) + 1
-- never earlier than the lease already ends (see session-5.lua). Written first: a Redis
-- at its maxmemory refuses a script whose first write may grow memory (HSET), and a
-- heartbeat only rewrites what exists, so live sessions stay alive while Redis is full
-- (the reuse path of session-5.lua writes in this order too).
if redis.call('PEXPIREAT', visitor_key, expires_at - 1, 'GT') == 0 then
  expires_at = redis.call('PEXPIRETIME', visitor_key) + 1
end
redis.call('HSET', visitor_key, 'h', beats)
redis.call('HSET', holders_key, cur[2], session_id .. '|' .. visitor_id .. '|' ..
  (cur[3] or now) .. '|' .. expires_at .. '|' .. beats)
return {'alive', cur[2], expires_at}
