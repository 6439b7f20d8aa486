--[[
end_sessions-5.lua: report the sessions of one pool whose leases ran out (sidecar).

A number whose score has passed is a candidate for the next assignment whatever this
script does (no background process is needed for numbers to come back). This script
walks the numbers whose score passed since its last call and, for each:
  - a lease that was refreshed after its score was written (see session-5.lua) is still
    held: the number moves to its lease's end, where a later call meets it again;
  - a lease that ended gets its session.ended record, once (and, under the `lru` policy,
    its number the score of its lease's end, where `lru` looks): a lease whose number was
    reassigned before the sidecar came by was already reported by session-5.lua, and a
    reported lease carries the "|e" mark, so the two never both report it.
With the sidecar running, scores are thus exact within one sidecar interval, and
assignments seldom meet a refreshed lease.

KEYS[1] pool     hash: ended_upto / ended_skip (epoch ms up to which the active set's
                 scores were walked, and how many numbers scored exactly ended_upto were
                 read), ended_upto_i / ended_skip_i (the same for the inactive set); policy
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set of deactivated numbers, scored the same way: a session on a
                 deactivated number goes on, and its end is reported like any other
KEYS[4] holders  hash: N -> lease "sid|vid|started_ms|expires_ms|heartbeats[|e]"
KEYS[5] outbox   stream (event=session.ended entries)
ARGV[1] pool id
ARGV[2] most numbers to read per set in this call

Each set keeps its own watermark. Below it, no number carries a lease that ended without
being reported: the scripts that put a number there (deactivate_number-5.lua,
activate_number-6.lua) report such a lease first.
Returns {reported, more}: more = 1 when a set's limit was reached (call again).
Cost: O(log n + m) for the m numbers whose score passed since the last call.
]]
local pool_key, numbers_key, inactive_key, holders_key, outbox_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pool_id = ARGV[1]
local limit = tonumber(ARGV[2])

if redis.call('EXISTS', pool_key) == 0 then
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', pool_key, 'ended_upto', 'ended_skip', 'ended_upto_i',
  'ended_skip_i', 'policy')
local lru = state[5] == 'lru'

-- Walk one set from its watermark; returns reported, more, and the new watermark.
local function walk(set_key, upto, skip)
  local ended = redis.call('ZRANGEBYSCORE', set_key, upto, now, 'WITHSCORES',
    'LIMIT', skip, limit)
  local leases = {}
  if #ended > 0 then
    local fields = {}
    for i = 1, #ended, 2 do fields[#fields + 1] = ended[i] end
    leases = redis.call('HMGET', holders_key, unpack(fields))
  end
  local reported = 0
  local moved = {}
  for i = 1, #ended, 2 do
    local number, lease = ended[i], leases[(i + 1) / 2]
    if lease and string.sub(lease, -2) ~= '|e' then
      local sid, vid, started, lease_end, beats =
        string.match(lease, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
      if tonumber(lease_end) > now then
        redis.call('ZADD', set_key, 'XX', lease_end, number)
        moved[i] = true
      else
        redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
          'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
          'ended_at', lease_end, 'duration_ms', tonumber(lease_end) - tonumber(started),
          'heartbeats', beats)
        redis.call('HSET', holders_key, number, lease .. '|e')
        if lru and tonumber(lease_end) > tonumber(ended[i + 1]) then
          -- free since its lease's end, not its score: keep the `lru` order true
          redis.call('ZADD', set_key, 'XX', lease_end, number)
          moved[i] = true
        end
        reported = reported + 1
      end
    end
  end
  -- Resume after what was read: at the last score read, skipping the numbers of that
  -- score already read and still there (many leases can end in the same millisecond; a
  -- moved one left). A batch that was not full read everything up to now.
  if #ended == 2 * limit then
    local last = tonumber(ended[#ended])
    local same = 0
    for i = #ended - 1, 1, -2 do
      if tonumber(ended[i + 1]) ~= last then break end
      if not moved[i] then same = same + 1 end
    end
    if last == upto then same = skip + same end
    return reported, 1, last, same
  end
  return reported, 0, now, 0
end

local reported, more, upto, skip = walk(numbers_key, tonumber(state[1] or 0),
  tonumber(state[2] or 0))
local reported_i, more_i, upto_i, skip_i = walk(inactive_key, tonumber(state[3] or 0),
  tonumber(state[4] or 0))
redis.call('HSET', pool_key, 'ended_upto', upto, 'ended_skip', skip,
  'ended_upto_i', upto_i, 'ended_skip_i', skip_i)
return {reported + reported_i, math.max(more, more_i)}
