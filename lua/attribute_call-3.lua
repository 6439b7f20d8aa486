--[[
attribute_call-3.lua: which session held a pool's number when a call came in (read only).

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms) = the latest lease's end
KEYS[3] holders  hash: N -> latest lease "sid|vid|started_ms[|e]", h:N, a:N source
ARGV[1] the called number (E.164)
ARGV[2] the call's time (epoch ms), or "" for now
ARGV[3] grace period (ms): how long after a session ended its number still credits it

Only the number's latest lease is considered: a call is credited to it when the lease
covers the call's time ("live"), or ended less than the grace period before it and the
number has not been leased since ("grace").

Returns {match, lease|false, source|false, lease_end_ms|false, at_ms}, match one of
  "live", "grace", "no_session", "not_a_pool_number", "no_pool".
]]
local pool_key, numbers_key, holders_key = KEYS[1], KEYS[2], KEYS[3]
local number, grace_ms = ARGV[1], tonumber(ARGV[3])
local at = tonumber(ARGV[2])
if not at then
  local t = redis.call('TIME')
  at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if redis.call('EXISTS', pool_key) == 0 then
  return {'no_pool', false, false, false, at}
end
local score = redis.call('ZSCORE', numbers_key, number)
local got = redis.call('HMGET', holders_key, number, 'a:' .. number)
local lease, source = got[1], got[2]
if not lease then
  if not score then return {'not_a_pool_number', false, false, false, at} end
  return {'no_session', false, false, false, at}
end
local started = tonumber(string.match(lease, '^[^|]*|[^|]*|([^|]*)'))
local lease_end = tonumber(score or 0)
if not score then
  -- taken out of the pool's active numbers: its lease ended when it was reported so
  if string.sub(lease, -2) ~= '|e' then lease_end = at + 1 end
end
if started <= at and at < lease_end then
  return {'live', lease, source, lease_end, at}
end
if started <= at and lease_end <= at and at - lease_end < grace_ms then
  return {'grace', lease, source, lease_end, at}
end
return {'no_session', false, false, false, at}
