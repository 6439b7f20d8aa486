-- wrk script: POST /v1/dni/session with a mix of new and returning visitors.
-- Env: DNI_POOL (pool id), DNI_NEW_SHARE (share of requests from a new visitor, 0..1).
local pool = os.getenv("DNI_POOL")
local path = os.getenv("DNI_PATH") or "/v1/dni/session"
local new_share = tonumber(os.getenv("DNI_NEW_SHARE") or "0.2")
local seen, count, threads = {}, 0, 0
local headers = {["Content-Type"] = "text/plain", ["User-Agent"] = "wrk-bench"}

-- setup() runs in wrk's main Lua state; thread:set() makes a global of each thread's
-- own state (a local of the same name would hide it there).
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
end

request = function()
  local vid
  if count == 0 or math.random() < new_share then
    count = count + 1
    vid = "w" .. thread_id .. "-" .. count .. "-" .. math.random(1, 1e9)
    seen[count] = vid
  else
    vid = seen[math.random(1, count)]
  end
  local body = '{"pool_id":"' .. pool .. '","visitor_id":"' .. vid ..
    '","landing_page":"https://example.com/?utm_source=google","utm_source":"google",' ..
    '"utm_medium":"cpc","referrer":"https://www.google.com/"}'
  return wrk.format("POST", path, headers, body)
end
