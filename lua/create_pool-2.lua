--[[
create_pool-2.lua: create a pool and its first numbers in one step.

KEYS[1] pool     hash of the pool's settings (must not exist yet)
KEYS[2] numbers  sorted set: number -> free-from time (epoch ms)
ARGV[1] n, the count of field/value pairs that follow for the pool hash
ARGV[2 .. 2n+1]  field, value pairs (ttl_ms, fallback, policy, name, ...)
ARGV[2n+2 ..]    E.164 numbers, added as available (score 0)

Returns 1, or 0 when the pool already exists (nothing written). Cost: O(m log m).
]]
local pool_key, numbers_key = KEYS[1], KEYS[2]
local n = tonumber(ARGV[1])
if redis.call('EXISTS', pool_key) == 1 then
  return 0
end
local t = redis.call('TIME')
local fields = {'created_at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for i = 2, 2 * n + 1 do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', pool_key, unpack(fields))
local first = 2 * n + 2
for i = first, #ARGV, 500 do
  local args = {}
  for j = i, math.min(i + 499, #ARGV) do
    args[#args + 1] = 0
    args[#args + 1] = ARGV[j]
  end
  redis.call('ZADD', numbers_key, 'NX', unpack(args))
end
return 1
