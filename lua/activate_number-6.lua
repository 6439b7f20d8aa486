--[[
activate_number-6.lua: make a deactivated number assignable again.

If a session still holds the number (its visitor record exists and names this number and
the lease's session id), the number goes back scored by that session's lease expiry (the
record's expiry + 1 ms), so it stays held; otherwise it is free at once (scored by its
old free-from time, or now if that is later than now). The caller reads the lease from
`holders` first and passes that visitor's record; the script re-checks it. A lease that
ended while the number was inactive and was not reported yet is reported here (and the
number is free since its end), so none is left behind the sidecar's watermark
(end_sessions-5.lua).

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set of active numbers: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers: number -> free-from time (epoch ms)
KEYS[4] holders  hash: number -> its last lease "session_id|visitor_id|..." (see
                 session-5.lua)
KEYS[5] outbox   stream (event=session.ended for a lease reported here)
KEYS[6] visitor  the record of the visitor named by ARGV[2] (any key of the pool's slot
                 when ARGV[2] is "")
ARGV[1] E.164 number
ARGV[2] the lease the caller read from holders ("" when there was none)
ARGV[3] pool id

Returns 1 activated, 2 it was already active, 0 not in this pool, -1 no such pool,
        -2 the lease changed since the caller read it (read it again and retry).
Cost: O(log n).
]]
local pool_key, numbers_key, inactive_key, holders_key, outbox_key, visitor_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local number, seen_lease, pool_id = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', pool_key) == 0 then
  return -1
end
local score = redis.call('ZSCORE', inactive_key, number)
if not score then
  if redis.call('ZSCORE', numbers_key, number) then
    return 2
  end
  return 0
end
local lease = redis.call('HGET', holders_key, number) or ''
if lease ~= seen_lease then
  return -2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free_from = math.min(tonumber(score), now)
if lease ~= '' then
  local sid = string.match(lease, '^([^|]*)|')
  local cur = redis.call('HMGET', visitor_key, 's', 'n')
  if cur[1] == sid and cur[2] == number then
    local record_expiry = redis.call('PEXPIRETIME', visitor_key)
    if record_expiry > 0 then
      free_from = record_expiry + 1
    end
  elseif string.sub(lease, -2) ~= '|e' then
    local vid, started, lease_end, beats =
      string.match(lease, '^[^|]*|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    free_from = tonumber(lease_end)
    if free_from <= now then
      redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
        'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
        'ended_at', lease_end, 'duration_ms', free_from - tonumber(started),
        'heartbeats', beats)
      redis.call('HSET', holders_key, number, lease .. '|e')
    end
  end
end

redis.call('ZREM', inactive_key, number)
redis.call('ZADD', numbers_key, free_from, number)
return 1
