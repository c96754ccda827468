-- Shared by the scripts: the benchmark's users (token, conversation) from BENCH_USERS.
local M = {}
function M.load()
  local users = {}
  local raw = os.getenv("BENCH_USERS") or ""
  for token, conv in string.gmatch(raw, '"token": "([^"]+)", "conversation_id": (%d+)') do
    users[#users + 1] = {token = token, conv = conv}
  end
  return users
end
return M
