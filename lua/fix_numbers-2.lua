--[[
fix_numbers-2.lua: count pools' target and backup numbers in the global index, so that
none of them can become a tracking number (and none can be a tracking number already).

KEYS[1] tracking  hash: E.164 tracking number -> pool id
KEYS[2] fixed     hash: E.164 target/backup number -> count of pools naming it
ARGV[1] a, the count of numbers to add
ARGV[2 .. a+1]   E.164 numbers a pool now names (count + 1)
ARGV[a+2 ..]     E.164 numbers a pool no longer names (count - 1; gone at 0)

Returns {1}, or {0, number, owner} when a number to add is a tracking number of pool
`owner` (nothing written). Cost: O(m) for m numbers.
]]
local tracking_key, fixed_key = KEYS[1], KEYS[2]
local a = tonumber(ARGV[1])

for i = 2, a + 1 do
  local owner = redis.call('HGET', tracking_key, ARGV[i])
  if owner then
    return {0, ARGV[i], owner}
  end
end
local delta, order = {}, {}
for i = 2, #ARGV do
  local n = ARGV[i]
  if delta[n] == nil then
    delta[n] = 0
    order[#order + 1] = n
  end
  delta[n] = delta[n] + (i <= a + 1 and 1 or -1)
end
local counts = {}
for _, n in ipairs(order) do
  counts[n] = tonumber(redis.call('HGET', fixed_key, n) or '0') + delta[n]
end
for _, n in ipairs(order) do
  if counts[n] <= 0 then
    redis.call('HDEL', fixed_key, n)
  else
    redis.call('HSET', fixed_key, n, counts[n])
  end
end
return {1}
