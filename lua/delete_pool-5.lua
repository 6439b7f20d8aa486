--[[
delete_pool-5.lua: delete a pool whose numbers have all been removed.

The caller first removes every number with remove_number-7.lua (which ends the session
holding it); this script then deletes the pool's settings and bookkeeping. A pool that
still has numbers (added meanwhile) is left alone: the caller removes them and retries.
The outbox stream is not touched: it may hold entries the sidecar has not moved yet.

KEYS[1] pool     hash
KEYS[2] numbers  sorted set of active numbers
KEYS[3] inactive sorted set of deactivated numbers
KEYS[4] holders  hash: number -> last lease
KEYS[5] flows    hash: number -> call flow
ARGV    none

Returns 1 deleted, -1 no such pool, -2 the pool still has numbers (remove them, retry).
Cost: O(1).
]]
local pool_key, numbers_key, inactive_key, holders_key, flows_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

if redis.call('EXISTS', pool_key) == 0 then
  return -1
end
if redis.call('ZCARD', numbers_key) + redis.call('ZCARD', inactive_key) > 0 then
  return -2
end

redis.call('DEL', pool_key, numbers_key, inactive_key, holders_key, flows_key)
return 1
