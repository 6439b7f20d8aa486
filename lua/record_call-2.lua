--[[
record_call-2.lua: write a call's answer once per call id, and its stream entry with it.

KEYS[1] seen     string: the first answer given for this call id (JSON), with a TTL;
                 tagged {dni:calls} so it shares the calls stream's hash slot
KEYS[2] calls    the consumers' calls stream
ARGV[1] how long to remember the call id (s)
ARGV[2] a safety cap on the stream's length (MAXLEN ~); the sidecar trims it to the
        retention itself, warning when that drops unread entries
ARGV[3] the answer (JSON)
ARGV[4..] the stream entry's field, value pairs

Returns {1, answer} when this is the call's first post (entry written), or
{0, first answer} for a repeat (nothing written).
]]
local seen_key, calls_key = KEYS[1], KEYS[2]
local keep_s, maxlen, answer = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local first = redis.call('GET', seen_key)
if first then
  return {0, first}
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('SET', seen_key, answer, 'EX', keep_s)
redis.call('XADD', calls_key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
return {1, answer}
