--[[
lead-1.lua: take or keep the sidecars' leader lease (one sidecar works at a time).

KEYS[1] leader   string: the id of the sidecar that leads, with a TTL
ARGV[1] this sidecar's id
ARGV[2] lease length (ms)

Returns 1 when this sidecar leads (lease taken or renewed), 0 when another one does.
]]
local leader_key = KEYS[1]
local me = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local current = redis.call('GET', leader_key)
if current == me then
  redis.call('PEXPIRE', leader_key, ttl_ms)
  return 1
end
if current then
  return 0
end
redis.call('SET', leader_key, me, 'PX', ttl_ms)
return 1
