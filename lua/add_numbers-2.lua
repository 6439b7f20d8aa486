--[[
add_numbers-2.lua: add active numbers to a pool; they are available at once.

KEYS[1] pool     hash (must exist)
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
ARGV[1..] E.164 numbers (already normalised by the caller)

A new number is scored 0 (free since ever); a number already in the pool keeps its
score, so adding it again never ends the session that holds it.
Returns the count of numbers newly added, or -1 when the pool does not exist.
Cost: O(m log n) for m numbers.
]]
local pool_key, numbers_key = KEYS[1], KEYS[2]
if redis.call('EXISTS', pool_key) == 0 then
  return -1
end
local added = 0
for i = 1, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do
    args[#args + 1] = 0
    args[#args + 1] = ARGV[j]
  end
  added = added + redis.call('ZADD', numbers_key, 'NX', unpack(args))
end
return added
