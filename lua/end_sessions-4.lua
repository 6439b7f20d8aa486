--[[
end_sessions-4.lua: report the sessions of one pool whose leases ran out (sidecar).

A lease ends when its number's free-from score passes; its number is free from then on
whatever this script does (no background process is needed for that). This script only
writes the session.ended records, once per lease: a lease whose number was reassigned
before the sidecar came by was already reported by session-5.lua, and a reported lease
carries the "|e" mark, so the two never both report it.

KEYS[1] pool     hash: ended_upto (epoch ms up to which leases were reported) and
                 ended_skip (how many numbers scored exactly ended_upto were read)
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
KEYS[3] holders  hash: N -> lease "sid|vid|started_ms[|e]", h:N heartbeats
KEYS[4] outbox   stream (event=session.ended entries)
ARGV[1] pool id
ARGV[2] most leases to report in this call

Returns {reported, more}: more = 1 when the limit was reached (call again).
Cost: O(log n + m) for the m leases that ended since the last call.
]]
local pool_key, numbers_key, holders_key, outbox_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pool_id = ARGV[1]
local limit = tonumber(ARGV[2])

if redis.call('EXISTS', pool_key) == 0 then
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', pool_key, 'ended_upto', 'ended_skip')
local upto, skip = tonumber(state[1] or 0), tonumber(state[2] or 0)
local ended = redis.call('ZRANGEBYSCORE', numbers_key, upto, now, 'WITHSCORES',
  'LIMIT', skip, limit)
local leases = {}
for i = 1, #ended, 2 do
  local got = redis.call('HMGET', holders_key, ended[i], 'h:' .. ended[i])
  leases[#leases + 1] = got
end

local reported = 0
for i = 1, #ended, 2 do
  local number, freed_at = ended[i], ended[i + 1]
  local lease, beats = leases[(i + 1) / 2][1], leases[(i + 1) / 2][2]
  if lease and string.sub(lease, -2) ~= '|e' then
    local sid, vid, started = string.match(lease, '^([^|]*)|([^|]*)|([^|]*)$')
    redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
      'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
      'ended_at', freed_at, 'duration_ms', tonumber(freed_at) - tonumber(started),
      'heartbeats', beats or '0')
    redis.call('HSET', holders_key, number, lease .. '|e')
    reported = reported + 1
  end
end
-- Resume after what was read: at the last score read, skipping the numbers of that score
-- already read (many leases can end in the same millisecond). A batch that was not full
-- read everything up to now.
local more = 0
if #ended == 2 * limit then
  more = 1
  local last = tonumber(ended[#ended])
  local same = 0
  for i = #ended, 2, -2 do
    if tonumber(ended[i]) ~= last then break end
    same = same + 1
  end
  if last == upto then same = skip + same end
  upto, skip = last, same
else
  upto, skip = now, 0
end
redis.call('HSET', pool_key, 'ended_upto', upto, 'ended_skip', skip)
return {reported, more}
