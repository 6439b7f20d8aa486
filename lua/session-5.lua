--[[
session-5.lua: give a visitor their tracking number for one pool, atomically.

  reuse   the visitor holds a live lease on a pool number: same number and session id,
          the lease and the session are refreshed by the pool's session length;
  assign  otherwise take an available active number (random rank, or the one free the
          longest under the `lru` policy) and lease it for the session length;
  fallback/unavailable  otherwise hold nothing and answer with the pool's backup number
          (or none).

A lease is written in two places: the visitor record (its key expires with the lease, so
it exists exactly while the lease holds) and the number's entry in the holders hash,
which says until when the number is held. The pool's numbers sit in one sorted set
scored by the time each one is free, as far as the set knows: the score is written when
a number is leased and is a lower bound of the lease's end, because refreshes (reuse,
heartbeat) only rewrite the two O(1) records and leave the sorted set alone. A number
whose score has passed is therefore a candidate, and its holders entry decides: a lease
that ended frees it (an expired session returns its number with no background process);
a lease that was refreshed moves the number to its real end and the pick goes on. Each
such move stands for at least one session length of refreshes, so it is paid for once
per session length, and the sidecar makes them ahead of time (end_sessions-5.lua).

KEYS[1] pool     hash: ttl_ms (session length, ms), fallback (E.164 or ""), policy
KEYS[2] numbers  sorted set: member = E.164 number, score = free-from time (epoch ms),
                 written at assignment; never later than the lease's end
KEYS[3] holders  hash, per number N of its latest lease:
                   N      "session_id|visitor_id|started_ms|expires_ms|heartbeats",
                          plus "|e" once its end was reported
                   a:N    "ip\nuser_agent\nattribution JSON" (the session's source)
KEYS[4] visitor  hash, the session itself: s session_id, n number, t started_ms,
                 h heartbeats. Its key expires 1 ms before the lease, so the record
                 exists only while its lease holds; whatever takes a number away early
                 deletes the record with it.
KEYS[5] outbox   stream of session records for the sidecar (same hash slot)
ARGV[1] session id to use if a new session starts (opaque string, no "|")
ARGV[2] random non-negative integer (< 2^31) choosing among available numbers
ARGV[3] visitor id (no "|")
ARGV[4] pool id
ARGV[5] source: "ip\nuser_agent\nattribution JSON" (the page's utm_*, gclid, ...),
        stored as given and written only when a session starts (first touch)
ARGV[6] the call grace period (ms; "" or missing: 0): while some numbers have been
        free for longer, a number freed less than this ago is not assigned (random
        policy), so a call from the visitor who just held it is not credited to the next
ARGV[7] optional, "reuse": reuse only; no new session (the client is over its cap of
        new sessions, see ratelimit.py): answers "capped" instead of assigning

Returns {status, number|false, session_id|false, expires_at_ms|false, session_length_ms},
  status one of "new", "reused", "fallback", "unavailable", "capped", "no_pool" (which
  has no session length). The length lets the broker tell the snippet to beat often enough.
Outbox entries, for each "new": event=session.started (with the source); and, when the
number's previous lease has not been reported ended yet, event=session.ended for it
(ended_at = when that lease ran out). The sidecar moves them to the consumers' stream.
Clock: Redis's TIME, so every broker process shares one clock.
Cost: reuse O(1); assign O(log n) in the pool's numbers (plus one O(log n) move per
number found refreshed, amortised as above); nothing grows with live sessions.
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

-- Reuse: a visitor record exists only while its lease holds, so the number it names is
-- still its own. Refresh the record's expiry and the number's holders entry: O(1).
local cur = redis.call('HMGET', visitor_key, 's', 'n', 't', 'h')
if cur[1] then
  -- GT: a refresh never ends a lease earlier than it already ends (the pool's session
  -- length may have been shortened since), so the number's score stays a lower bound
  if redis.call('PEXPIREAT', visitor_key, expires_at - 1, 'GT') == 0 then
    expires_at = redis.call('PEXPIRETIME', visitor_key) + 1
  end
  redis.call('HSET', holders_key, cur[2], cur[1] .. '|' .. visitor_id .. '|' ..
    (cur[3] or now) .. '|' .. expires_at .. '|' .. (cur[4] or 0))
  return {'reused', cur[2], cur[1], expires_at, ttl_ms}
end

if ARGV[7] == 'reuse' then
  return {'capped', false, false, false, ttl_ms}
end

-- Assign: candidates hold ranks 0..k-1 of the set ordered by free-from time; those free
-- for the whole grace period hold ranks 0..k_old-1 and go first (random policy; `lru`
-- takes rank 0, the number free the longest, anyway).
local k = redis.call('ZCOUNT', numbers_key, '-inf', now)
local lru = cfg[3] == 'lru'
local grace_ms = tonumber(ARGV[6]) or 0
local cutoff = now - grace_ms
local k_old = 0
if grace_ms > 0 and not lru and k > 0 then
  k_old = redis.call('ZCOUNT', numbers_key, '-inf', cutoff)
end
local number, prev
while k > 0 do
  local rank = 0
  if not lru then rank = rand % (k_old > 0 and k_old or k) end
  local picked = redis.call('ZRANGE', numbers_key, rank, rank, 'WITHSCORES')
  local cand = picked[1]
  local lease = redis.call('HGET', holders_key, cand)
  local lease_end = lease and tonumber(string.match(lease, '^[^|]*|[^|]*|[^|]*|([^|]*)|'))
  if not lease_end or lease_end <= tonumber(picked[2]) or (lease_end <= now and not lru) then
    if not (k_old > 0 and lease_end and lease_end > cutoff) then
      number, prev = cand, lease  -- free
      break
    end
    -- Refreshed, then ended within the grace period: not free as long as its score
    -- said. Move it to its lease's end, out of the long-free ranks, and pick again.
    redis.call('ZADD', numbers_key, 'XX', lease_end, cand)
    k_old = k_old - 1
    rand = (rand * 48271 + 11) % 2147483647
  else
    -- Its lease was refreshed after its score was written: move the number to the
    -- lease's end. Held until then: pick again among the others. Ended since (`lru`
    -- only): free, but for less long than its score said, so look at the order again.
    redis.call('ZADD', numbers_key, 'XX', lease_end, cand)
    if lease_end > now then
      k = k - 1
      if k_old > 0 then k_old = k_old - 1 end  -- it was one of the long-free ranks
      rand = (rand * 48271 + 11) % 2147483647
    end
  end
end
if not number then
  local fallback = cfg[2]
  if fallback and fallback ~= '' then
    return {'fallback', fallback, false, false, ttl_ms}
  end
  return {'unavailable', false, false, false, ttl_ms}
end

if prev and string.sub(prev, -2) ~= '|e' then
  local sid, vid, started, ended_at, beats =
    string.match(prev, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  redis.call('XADD', outbox_key, '*', 'event', 'session.ended', 'pool_id', pool_id,
    'session_id', sid, 'visitor_id', vid, 'number', number, 'started_at', started,
    'ended_at', ended_at, 'duration_ms', tonumber(ended_at) - tonumber(started),
    'heartbeats', beats)
end
redis.call('ZADD', numbers_key, 'XX', expires_at, number)
redis.call('HSET', holders_key, number,
  new_sid .. '|' .. visitor_id .. '|' .. now .. '|' .. expires_at .. '|0',
  'a:' .. number, source)
redis.call('HSET', visitor_key, 's', new_sid, 'n', number, 't', now, 'h', 0)
redis.call('PEXPIREAT', visitor_key, expires_at - 1)
redis.call('XADD', outbox_key, '*', 'event', 'session.started', 'pool_id', pool_id,
  'session_id', new_sid, 'visitor_id', visitor_id, 'number', number, 'started_at', now,
  'expires_at', expires_at, 'source', source)
return {'new', number, new_sid, expires_at, ttl_ms}
