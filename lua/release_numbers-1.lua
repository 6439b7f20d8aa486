--[[
release_numbers-1.lua: drop a pool's claims on tracking numbers from the global index.

KEYS[1] tracking  hash: E.164 tracking number -> pool id
ARGV[1] pool id
ARGV[2 ..] E.164 numbers; a number claimed by another pool is left alone

Returns the count of claims dropped. Cost: O(m) for m numbers.
]]
local tracking_key = KEYS[1]
local pool_id = ARGV[1]
local owners = {}
for i = 2, #ARGV do
  owners[i] = redis.call('HGET', tracking_key, ARGV[i])
end
local dropped = 0
for i = 2, #ARGV do
  if owners[i] == pool_id then
    redis.call('HDEL', tracking_key, ARGV[i])
    dropped = dropped + 1
  end
end
return dropped
