-- POST /api/chat as the benchmark's users (random ones; in turns, in turn). BENCH_CHAT: "new" (new conversation each time),
-- "turn" (the user's existing conversation) or "stream" (a new streamed conversation).
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local users = require("users").load()
local mode = os.getenv("BENCH_CHAT") or "new"
local n = 0
local threads = 0
function setup(thread)  -- each thread gets a number (wrk runs -t2)
  thread:set("id", threads)
  threads = threads + 1
end
request = function()
  local u
  n = n + 1
  if mode == "turn" then
    -- A conversation takes one turn at a time (409 otherwise): each thread cycles through its
    -- own half of the users, more of them than its connections, so no user has two at once.
    local half = math.floor(#users / 2)
    u = users[(id or 0) * half + (n % half) + 1]
  else
    u = users[math.random(#users)]
  end
  local body = '{"message": "benchmark question ' .. n .. '"'
  if mode == "turn" then body = body .. ', "conversation_id": ' .. u.conv end
  if mode == "stream" then body = body .. ', "stream": true' end
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. u.token,
    ["Content-Type"] = "application/json"}, body .. "}")
end
