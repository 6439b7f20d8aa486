--[[
remove_number-6.lua: take one number out of a pool for good; a session holding it ends.

The caller reads the number's last lease from `holders` first and passes that visitor's
record as KEYS[6]; the script re-checks the lease (it may have changed in between) and
deletes the record when it still holds this number, so the holder's next heartbeat says
"expired" and its next session request gets another number.

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set of active numbers: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers: number -> free-from time (epoch ms)
KEYS[4] holders  hash: number -> "session_id|visitor_id|started_ms" of its last lease
KEYS[5] flows    hash: number -> call flow
KEYS[6] visitor  the record of the visitor named by ARGV[2] (any key of the pool's slot
                 when ARGV[2] is "")
ARGV[1] E.164 number
ARGV[2] the lease the caller read from holders ("" when there was none)

Returns 1 removed, 0 the number is not in this pool, -1 no such pool,
        -2 the lease changed since the caller read it (read it again and retry).
Writes no stream entry. Cost: O(log n).
]]
local pool_key, numbers_key, inactive_key, holders_key, flows_key, visitor_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local number, seen_lease = ARGV[1], ARGV[2]

if redis.call('EXISTS', pool_key) == 0 then
  return -1
end
local lease = redis.call('HGET', holders_key, number) or ''
if lease ~= seen_lease then
  return -2
end
local active = redis.call('ZSCORE', numbers_key, number)
local inactive = redis.call('ZSCORE', inactive_key, number)
if not active and not inactive then
  return 0
end
local holds = false
if lease ~= '' then
  local sid = string.match(lease, '^([^|]*)|')
  local cur = redis.call('HMGET', visitor_key, 's', 'n')
  holds = cur[1] == sid and cur[2] == number
end

if holds then
  redis.call('DEL', visitor_key)
end
redis.call('ZREM', numbers_key, number)
redis.call('ZREM', inactive_key, number)
redis.call('HDEL', holders_key, number)
redis.call('HDEL', flows_key, number)
return 1
