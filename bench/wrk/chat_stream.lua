package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local users = require("users").load()
local n = 0
request = function()
  local u = users[math.random(#users)]
  n = n + 1
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. u.token,
    ["Content-Type"] = "application/json"}, '{"message": "stream ' .. n .. '", "stream": true}')
end
