--[[
remove_number-7.lua: take one number out of a pool for good; a session holding it ends.

The caller reads the number's last lease from `holders` first and passes that visitor's
record as KEYS[7]; the script re-checks the lease (it may have changed in between) and
deletes the record when it still holds this number, so the holder's next heartbeat says
"expired" and its next session request gets another number. A lease whose end was not
reported yet is reported here (session.ended, ended now if its session was live).

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set of active numbers: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers: number -> free-from time (epoch ms)
KEYS[4] holders  hash: N -> "session_id|visitor_id|started_ms|expires_ms|heartbeats[|e]",
                 a:N (see session-5.lua)
KEYS[5] flows    hash: number -> call flow
KEYS[6] outbox   stream (event=session.ended)
KEYS[7] visitor  the record of the visitor named by ARGV[2] (any key of the pool's slot
                 when ARGV[2] is "")
ARGV[1] E.164 number
ARGV[2] the lease the caller read from holders ("" when there was none)
ARGV[3] pool id

Returns 1 removed, 0 the number is not in this pool, -1 no such pool,
        -2 the lease changed since the caller read it (read it again and retry).
Cost: O(log n).
]]
local pool_key, numbers_key, inactive_key, holders_key, flows_key, outbox_key, visitor_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local number, seen_lease, pool_id = ARGV[1], ARGV[2], ARGV[3]

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

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if holds then
  redis.call('DEL', visitor_key)
end
if lease ~= '' and string.sub(lease, -2) ~= '|e' then
  local sid, vid, started, lease_end, beats =
    string.match(lease, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local ended_at = math.min(tonumber(lease_end), now)
  redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
    'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
    'ended_at', ended_at, 'duration_ms', ended_at - tonumber(started),
    'heartbeats', beats, 'reason', 'number_removed')
end
redis.call('ZREM', numbers_key, number)
redis.call('ZREM', inactive_key, number)
redis.call('HDEL', holders_key, number, 'a:' .. number)
redis.call('HDEL', flows_key, number)
return 1
