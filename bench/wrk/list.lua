package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local users = require("users").load()
request = function()
  local u = users[math.random(#users)]
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. u.token})
end
