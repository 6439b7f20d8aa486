--[[
update_pool-1.lua: change settings of an existing pool (never creates one).

KEYS[1] pool  hash of the pool's settings
ARGV[1 ..]    field, value pairs (ttl_ms, fallback, policy, name, ...)

A new session length applies to leases started or refreshed from now on.
Returns 1, or 0 when the pool does not exist (nothing written). Cost: O(1).
]]
local pool_key = KEYS[1]
if redis.call('EXISTS', pool_key) == 0 then
  return 0
end
redis.call('HSET', pool_key, unpack(ARGV))
return 1
