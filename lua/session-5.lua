--[[
session-5.lua: give a visitor their tracking number for one pool, atomically.

  reuse   the visitor holds a live lease on a pool number: same number and session id,
          the lease and the session are refreshed by the pool's session length;
  assign  otherwise take an available active number (random rank, or the one free the
          longest under the `lru` policy) and lease it for the session length;
  fallback/unavailable  otherwise hold nothing and answer with the pool's backup number
          (or none).

The pool's numbers live in one sorted set scored by the epoch ms at which each number is
free (its lease's expiry; 0 for a number never leased). A number is available exactly when
its score <= now, so an expired session returns its number with no background process.

KEYS[1] pool     hash: ttl_ms (session length, ms), fallback (E.164 or ""), policy
KEYS[2] numbers  sorted set: member = E.164 number, score = free-from time (epoch ms)
KEYS[3] holders  hash, per number N of its latest lease:
                   N      "session_id|visitor_id|started_ms", plus "|e" once ended
                   h:N    heartbeats received
                   a:N    "ip\nuser_agent\nattribution JSON" (the session's source)
KEYS[4] visitor  hash, the session itself: s session_id, n number. Its key expires
                 1 ms before the lease, so the record exists only while its lease holds;
                 whatever takes a number away early deletes the record with it.
KEYS[5] outbox   stream of session records for the sidecar (same hash slot)
ARGV[1] session id to use if a new session starts (opaque string, no "|")
ARGV[2] random non-negative integer (< 2^31) choosing among available numbers
ARGV[3] visitor id (no "|")
ARGV[4] pool id
ARGV[5] source: "ip\nuser_agent\nattribution JSON" (the page's utm_*, gclid, ...),
        stored as given and written only when a session starts (first touch)

Returns {status, number|false, session_id|false, expires_at_ms|false}, status one of
  "new", "reused", "fallback", "unavailable", "no_pool".
Outbox entries, for each "new": event=session.started (with the source); and, when the
number's previous lease has not been reported ended yet, event=session.ended for it
(ended_at = when that lease ran out). The sidecar moves them to the consumers' stream.
Clock: Redis's TIME, so every broker process shares one clock.
Cost: O(log n) in the pool's numbers; nothing grows with live sessions.
]]
local pool_key, numbers_key, holders_key, visitor_key, outbox_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local new_sid = ARGV[1]
local rand = tonumber(ARGV[2])
local visitor_id = ARGV[3]
local pool_id = ARGV[4]
local source = ARGV[5]

local cfg = redis.call('HMGET', pool_key, 'ttl_ms', 'fallback', 'policy')
if not cfg[1] then
  return {'no_pool', false, false, false}
end
local ttl_ms = tonumber(cfg[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires_at = now + ttl_ms

-- Reuse: a visitor record exists only while its lease holds (its key expires 1 ms
-- before the lease, and whatever takes a number away early deletes the record), so the
-- number it names is still its own.
local cur = redis.call('HMGET', visitor_key, 's', 'n')
if cur[1] then
  redis.call('ZADD', numbers_key, 'XX', expires_at, cur[2])
  redis.call('PEXPIREAT', visitor_key, expires_at - 1)
  return {'reused', cur[2], cur[1], expires_at}
end

-- Assign: available numbers hold ranks 0..k-1 of the set ordered by free-from time.
local k = redis.call('ZCOUNT', numbers_key, '-inf', now)
if k == 0 then
  local fallback = cfg[2]
  if fallback and fallback ~= '' then
    return {'fallback', fallback, false, false}
  end
  return {'unavailable', false, false, false}
end
local rank = 0
if cfg[3] ~= 'lru' then rank = rand % k end
local picked = redis.call('ZRANGE', numbers_key, rank, rank, 'WITHSCORES')
local number, freed_at = picked[1], picked[2]
local prev = redis.call('HMGET', holders_key, number, 'h:' .. number)

if prev[1] and string.sub(prev[1], -2) ~= '|e' then
  local sid, vid, started = string.match(prev[1], '^([^|]*)|([^|]*)|([^|]*)$')
  redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
    'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
    'ended_at', freed_at, 'duration_ms', tonumber(freed_at) - tonumber(started),
    'heartbeats', prev[2] or '0')
end
local lease = new_sid .. '|' .. visitor_id .. '|' .. now
redis.call('ZADD', numbers_key, 'XX', expires_at, number)
redis.call('HSET', holders_key, number, lease, 'h:' .. number, 0, 'a:' .. number, source)
redis.call('HSET', visitor_key, 's', new_sid, 'n', number)
redis.call('PEXPIREAT', visitor_key, expires_at - 1)
redis.call('XADD', outbox_key, '*', 'event', 'session.started', 'pool_id', pool_id,
  'session_id', new_sid, 'visitor_id', visitor_id, 'number', number, 'started_at', now,
  'expires_at', expires_at, 'source', source)
return {'new', number, new_sid, expires_at}
