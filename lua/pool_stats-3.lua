--[[
pool_stats-3.lua: a consistent snapshot of a pool's size and live sessions.

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers, scored the same way
Returns {numbers, active_sessions, now_ms, on_active_numbers}, or {-1, -1, now_ms, -1}
when the pool does not exist: numbers counts the active ones; active_sessions every live
session, those on deactivated numbers included (they go on to their end);
on_active_numbers the live sessions holding active numbers (numbers minus these are free).
A number counts as held when its score > now: exact once end_sessions-5.lua has
walked the scores that passed (the broker runs it first; see session-5.lua on scores
that lag a refreshed lease). Cost: O(log n).
]]
local pool_key, numbers_key, inactive_key = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', pool_key) == 0 then
  return {-1, -1, now, -1}
end
local total = redis.call('ZCARD', numbers_key)
local on_active = redis.call('ZCOUNT', numbers_key, '(' .. now, '+inf')
local held = on_active + redis.call('ZCOUNT', inactive_key, '(' .. now, '+inf')
return {total, held, now, on_active}
