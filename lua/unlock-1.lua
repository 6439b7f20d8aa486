--[[
unlock-1.lua: release a lock (SET NX PX) only if this holder still holds it.

KEYS[1] the lock key
ARGV[1] the holder's token
Returns 1 released, 0 not held by this token (it expired and another took it).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
