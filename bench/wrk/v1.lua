-- POST /v1/chat/completions with the benchmark users' API keys (BENCH_USERS).
-- BENCH_CHAT: "whole" (a JSON answer) or "stream" (server-sent events, usage not asked for).
local keys = {}
for key in string.gmatch(os.getenv("BENCH_USERS") or "", '"key": "([^"]+)"') do
  keys[#keys + 1] = key
end
local stream = (os.getenv("BENCH_CHAT") or "whole") == "stream"
local n = 0
request = function()
  n = n + 1
  local body = '{"model": "vllm-simulator", "messages": [{"role": "user", "content": '
    .. '"benchmark question ' .. n .. '"}], "max_tokens": 16'
  if stream then body = body .. ', "stream": true' end
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. keys[math.random(#keys)],
    ["Content-Type"] = "application/json"}, body .. "}")
end
