--[[
deactivate_number-5.lua: stop assigning one number of a pool.

The number moves from the active set to the inactive set, so no session request can pick
it. A session holding it keeps working to its end: reuse and heartbeat touch only the
visitor record and the holders entry, never the sorted sets; the sidecar reports its end
from the inactive set (end_sessions-5.lua). The number is then free only when
reactivated (activate_number-6.lua).

In the inactive set the number is scored by its lease's end when a session holds it
(exact: the holders entry has it), so the sidecar meets it there. A lease that ended
without being reported yet is reported here, so no unreported lease is ever left behind
the sidecar's watermark.

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set of active numbers: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers: number -> free-from time (epoch ms)
KEYS[4] holders  hash: N -> lease "sid|vid|started_ms|expires_ms|heartbeats[|e]"
KEYS[5] outbox   stream (event=session.ended for a lease reported here)
ARGV[1] E.164 number
ARGV[2] pool id

Returns 1 deactivated, 2 it was already inactive, 0 not in this pool, -1 no such pool.
Cost: O(log n).
]]
local pool_key, numbers_key, inactive_key, holders_key, outbox_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local number, pool_id = ARGV[1], ARGV[2]

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

local lease = redis.call('HGET', holders_key, number)
if lease and string.sub(lease, -2) ~= '|e' then
  local sid, vid, started, lease_end, beats =
    string.match(lease, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(lease_end) <= now then
    redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
      'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
      'ended_at', lease_end, 'duration_ms', tonumber(lease_end) - tonumber(started),
      'heartbeats', beats)
    redis.call('HSET', holders_key, number, lease .. '|e')
  end
  score = lease_end  -- held until then, or free since then
end

redis.call('ZREM', numbers_key, number)
redis.call('ZADD', inactive_key, score, number)
return 1
