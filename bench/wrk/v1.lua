-- POST /v1/chat/completions. BENCH_CHAT: "whole" (a JSON answer), "stream" (server-sent
-- events, usage not asked for), or "direct" (whole, no key: the model server itself or a
-- bare pass-through). Otherwise each request carries a benchmark user's API key (BENCH_USERS).
local keys = {}
for key in string.gmatch(os.getenv("BENCH_USERS") or "", '"key": "([^"]+)"') do
  keys[#keys + 1] = key
end
local mode = os.getenv("BENCH_CHAT") or "whole"
local n = 0
request = function()
  n = n + 1
  local body = '{"model": "vllm-simulator", "messages": [{"role": "user", "content": '
    .. '"benchmark question ' .. n .. '"}], "max_tokens": 16'
  if mode == "stream" then body = body .. ', "stream": true' end
  local headers = {["Content-Type"] = "application/json"}
  if mode ~= "direct" then headers["Authorization"] = "Bearer " .. keys[math.random(#keys)] end
  return wrk.format("POST", nil, headers, body .. "}")
end
