-- POST /api/chat as random users. BENCH_CHAT: "new" (new conversation each time),
-- "turn" (the user's existing conversation) or "stream" (a new streamed conversation).
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local users = require("users").load()
local mode = os.getenv("BENCH_CHAT") or "new"
local n = 0
request = function()
  local u = users[math.random(#users)]
  n = n + 1
  local body = '{"message": "benchmark question ' .. n .. '"'
  if mode == "turn" then body = body .. ', "conversation_id": ' .. u.conv end
  if mode == "stream" then body = body .. ', "stream": true' end
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. u.token,
    ["Content-Type"] = "application/json"}, body .. "}")
end
