--[[
attribute_call-4.lua: which session held a pool's number when a call came in (read only).

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set: the pool's active numbers
KEYS[3] inactive sorted set: the pool's deactivated numbers
KEYS[4] holders  hash: N -> latest lease "sid|vid|started_ms|expires_ms|heartbeats[|e]",
                 a:N source (see session-5.lua)
ARGV[1] the called number (E.164)
ARGV[2] the call's time (epoch ms), or "" for now
ARGV[3] grace period (ms): how long after a session ended its number still credits it

Only the number's latest lease is considered: a call is credited to it when the lease
covers the call's time ("live"), or ended less than the grace period before it and the
number has not been leased since ("grace"). The lease's end is the one its last refresh
wrote (exact; the sorted set's score may lag it).

Returns {match, lease|false, source|false, lease_end_ms|false, at_ms}, match one of
  "live", "grace", "no_session", "not_a_pool_number", "no_pool".
]]
local pool_key, numbers_key, inactive_key, holders_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local number, grace_ms = ARGV[1], tonumber(ARGV[3])
local at = tonumber(ARGV[2])
if not at then
  local t = redis.call('TIME')
  at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if redis.call('EXISTS', pool_key) == 0 then
  return {'no_pool', false, false, false, at}
end
local got = redis.call('HMGET', holders_key, number, 'a:' .. number)
local lease, source = got[1], got[2]
if not lease then
  if not redis.call('ZSCORE', numbers_key, number)
      and not redis.call('ZSCORE', inactive_key, number) then
    return {'not_a_pool_number', false, false, false, at}
  end
  return {'no_session', false, false, false, at}
end
local started, lease_end = string.match(lease, '^[^|]*|[^|]*|([^|]*)|([^|]*)|')
started, lease_end = tonumber(started), tonumber(lease_end)
if started <= at and at < lease_end then
  return {'live', lease, source, lease_end, at}
end
if started <= at and lease_end <= at and at - lease_end < grace_ms then
  return {'grace', lease, source, lease_end, at}
end
return {'no_session', false, false, false, at}
