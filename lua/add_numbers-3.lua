--[[
add_numbers-3.lua: add active numbers to a pool; they are available at once.

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
KEYS[3] inactive sorted set: the pool's deactivated numbers
ARGV[1..] E.164 numbers (already normalised by the caller)

A new number is scored 0 (free since ever). A number already in the pool is left as it
is: an active one keeps its score, so adding it again never ends the session that holds
it, and a deactivated one stays deactivated (activate it to assign it again).
Returns the count of numbers newly added, or -1 when the pool does not exist.
Cost: O(m log n) for m numbers.
]]
local pool_key, numbers_key, inactive_key = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', pool_key) == 0 then
  return -1
end
local added = 0
for i = 1, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do
    if not redis.call('ZSCORE', inactive_key, ARGV[j]) then
      args[#args + 1] = 0
      args[#args + 1] = ARGV[j]
    end
  end
  if #args > 0 then
    added = added + redis.call('ZADD', numbers_key, 'NX', unpack(args))
  end
end
return added
