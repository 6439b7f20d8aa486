--[[
claim_numbers-2.lua: claim tracking numbers for a pool in the global number index,
all or none.

A tracking number belongs to at most one pool, and cannot be a pool's target or backup
number. Both indexes share one hash slot (they are global, not a pool's keys).

KEYS[1] tracking  hash: E.164 tracking number -> pool id
KEYS[2] fixed     hash: E.164 target/backup number -> count of pools naming it
ARGV[1] pool id
ARGV[2 ..] E.164 numbers

Returns {1} when every number is now this pool's (numbers it already had count),
or {0, number, owner} for the first number taken, where owner is the other pool's id or
"" when it is a target/backup number (nothing written). Cost: O(m) for m numbers.
]]
local tracking_key, fixed_key = KEYS[1], KEYS[2]
local pool_id = ARGV[1]

for i = 2, #ARGV do
  local owner = redis.call('HGET', tracking_key, ARGV[i])
  if owner and owner ~= pool_id then
    return {0, ARGV[i], owner}
  end
  if redis.call('HEXISTS', fixed_key, ARGV[i]) == 1 then
    return {0, ARGV[i], ''}
  end
end
for i = 2, #ARGV do
  redis.call('HSET', tracking_key, ARGV[i], pool_id)
end
return {1}
