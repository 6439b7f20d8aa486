--[[
deactivate_number-3.lua: stop assigning one number of a pool.

The number moves, with its score, from the active set to the inactive set, so no session
request can pick it. A session holding it keeps working to its end: reuse and heartbeat
touch only the visitor record and the holders entry, never the sorted sets. The number
is then free only when reactivated (activate_number-5.lua).

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set of active numbers: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers: number -> free-from time (epoch ms)
ARGV[1] E.164 number

Returns 1 deactivated, 2 it was already inactive, 0 not in this pool, -1 no such pool.
Writes no stream entry. Cost: O(log n).
]]
local pool_key, numbers_key, inactive_key = KEYS[1], KEYS[2], KEYS[3]
local number = ARGV[1]

if redis.call('EXISTS', pool_key) == 0 then
  return -1
end
local score = redis.call('ZSCORE', numbers_key, number)
if not score then
  if redis.call('ZSCORE', inactive_key, number) then
    return 2
  end
  return 0
end

redis.call('ZREM', numbers_key, number)
redis.call('ZADD', inactive_key, score, number)
return 1
