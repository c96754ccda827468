-- POST /v1/chat/completions straight to the model server (or a pass-through): no key.
local stream = (os.getenv("BENCH_CHAT") or "whole") == "stream"
local n = 0
request = function()
  n = n + 1
  local body = '{"model": "vllm-simulator", "messages": [{"role": "user", "content": '
    .. '"benchmark question ' .. n .. '"}], "max_tokens": 16'
  if stream then body = body .. ', "stream": true' end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body .. "}")
end
