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

KEYS[1] pool     hash: ended_upto / ended_last (the score and the number the walk of the
                 active set stopped at), ended_upto_i / ended_last_i (the same for the
                 inactive set); policy
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
local state = redis.call('HMGET', pool_key, 'ended_upto', 'ended_last', 'ended_upto_i',
  'ended_last_i', 'policy')
local lru = state[5] == 'lru'

-- Walk one set from where the last call stopped; returns reported, more, and where this
-- call stopped. The walk resumes after the last number it read, found by its rank: a
-- number that left meanwhile (reassigned, removed) cannot make it skip one, and when the
-- last number left its score, the walk starts again at that score (reading a number
-- twice does nothing the second time).
local function walk(set_key, upto, last)
  local start
  local score = last and last ~= '' and redis.call('ZSCORE', set_key, last)
  if score and tonumber(score) == upto then
    start = redis.call('ZRANK', set_key, last) + 1
  else
    start = redis.call('ZCOUNT', set_key, '-inf', '(' .. upto)
  end
  local batch = redis.call('ZRANGE', set_key, start, start + limit - 1, 'WITHSCORES')
  local ended = {}
  for i = 1, #batch, 2 do
    if tonumber(batch[i + 1]) > now then break end
    ended[#ended + 1] = batch[i]
    ended[#ended + 1] = batch[i + 1]
  end
  local leases = {}
  if #ended > 0 then
    local fields = {}
    for i = 1, #ended, 2 do fields[#fields + 1] = ended[i] end
    leases = redis.call('HMGET', holders_key, unpack(fields))
  end
  local reported = 0
  for i = 1, #ended, 2 do
    local number, lease = ended[i], leases[(i + 1) / 2]
    if lease and string.sub(lease, -2) ~= '|e' then
      local sid, vid, started, lease_end, beats =
        string.match(lease, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
      if tonumber(lease_end) > now then
        redis.call('ZADD', set_key, 'XX', lease_end, number)
      else
        redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
          'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
          'ended_at', lease_end, 'duration_ms', tonumber(lease_end) - tonumber(started),
          'heartbeats', beats)
        redis.call('HSET', holders_key, number, lease .. '|e')
        if lru and tonumber(lease_end) > tonumber(ended[i + 1]) then
          -- free since its lease's end, not its score: keep the `lru` order true
          redis.call('ZADD', set_key, 'XX', lease_end, number)
        end
        reported = reported + 1
      end
    end
  end
  if #ended == 2 * limit then  -- a full batch: there may be more up to now
    return reported, 1, tonumber(ended[#ended]), ended[#ended - 1]
  end
  if #ended == 0 then  -- nothing passed: the watermark stays (no write, no AOF line)
    return 0, 0, nil, nil
  end
  return reported, 0, now, false
end

-- A watermark moves only when its walk read something: an idle pool costs no write
-- (the sidecar calls this for every pool every pass). Staying is safe: nothing below
-- `now` was found above the old watermark, so the next walk starts where this one did.
local reported, more, upto, last = walk(numbers_key, tonumber(state[1] or 0), state[2])
local reported_i, more_i, upto_i, last_i = walk(inactive_key, tonumber(state[3] or 0),
  state[4])
if upto then
  redis.call('HSET', pool_key, 'ended_upto', upto, 'ended_last', last or '')
end
if upto_i then
  redis.call('HSET', pool_key, 'ended_upto_i', upto_i, 'ended_last_i', last_i or '')
end
return {reported + reported_i, math.max(more, more_i)}
