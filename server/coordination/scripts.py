"""The Lua scripts that keep the shared limits atomic (run by Redis, one call each)."""

from __future__ import annotations

# Every limit of a request in one call. KEYS: one key per op; ARGV: one "kind,a,b,c" per op
# (few arguments: encoding them is most of what a call costs the client). Redis's own clock
# (TIME) is every node's clock here.
#   u  usage counted:        tokens                  (INCRBY, only once the month is seeded)
#   a  allowance given back: interval_s, amount      (GCRA: the TAT moves back, never < now)
#   d  failures forgiven                             (DEL)
#   g  rate check:           interval_s, cost, size  (GCRA; size = the burst, in events)
#   b  budget check:         limit, seed (-1: none)  (refused once used >= limit)
#   f  backoff check:        free, max_delay_s, window_s
# First what is owed (u, a, d: never refused), then every check without writing; the first
# that refuses answers (ms * 100 + op) * 10 + why and nothing is charged; else all are
# charged: 0. why: 1 rate (ms to wait), 2 over budget, 3 budget unknown (seed it from the
# database and call again), 4 backoff (ms to wait).
LIMITS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local kinds, nums = {}, {}
for i = 1, n do
  local kind, a, b, c = string.match(ARGV[i], '^(%a),([^,]*),([^,]*),([^,]*)$')
  kinds[i] = kind
  nums[i] = {tonumber(a), tonumber(b), tonumber(c)}
end
local function arg(i, j) return nums[i][j - 1] end
local function refuse(i, why, ms) return (ms * 100 + i) * 10 + why end
local function tat_of(k)
  local tat = tonumber(redis.call('GET', k) or now)
  if tat < now then return now end
  return tat
end
local function keep(k, tat)
  if tat > now then
    redis.call('SET', k, tat, 'PX', math.ceil((tat - now) * 1000) + 1)
  else
    redis.call('DEL', k)
  end
end
for i = 1, n do
  local k, kind = KEYS[i], kinds[i]
  if kind == 'u' then
    if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, arg(i, 2)) end
  elseif kind == 'a' then
    keep(k, tat_of(k) - arg(i, 3) * arg(i, 2))
  elseif kind == 'd' then
    redis.call('DEL', k)
  end
end
local charge = {}
for i = 1, n do
  local k, kind = KEYS[i], kinds[i]
  if kind == 'g' then
    local T, cost, size = arg(i, 2), arg(i, 3), arg(i, 4)
    local tat = tat_of(k)
    local over = tat - now + math.min(cost, size) * T - size * T
    if over > 0 then return refuse(i, 1, math.ceil(over * 1000)) end
    charge[i] = tat + cost * T
  elseif kind == 'b' then
    local used = redis.call('GET', k)
    if not used then
      if arg(i, 3) < 0 then return refuse(i, 3, 0) end
      redis.call('SET', k, arg(i, 3), 'EX', 3456000, 'NX')
      used = redis.call('GET', k)
    end
    if tonumber(used) >= arg(i, 2) then return refuse(i, 2, 0) end
  elseif kind == 'f' then
    local free, max_delay, window = arg(i, 2), arg(i, 3), arg(i, 4)
    local seen = redis.call('HMGET', k, 'tries', 'last')
    local tries, last = tonumber(seen[1]) or 0, tonumber(seen[2]) or now
    if now - last >= window then tries = 0 end
    local delay = 0
    if tries >= free then delay = math.min(max_delay, 2 ^ math.min(tries - free, 62)) end
    local wait = last + delay - now
    if wait > 0 then return refuse(i, 4, math.ceil(wait * 1000)) end
    charge[i] = tries + 1
  end
end
for i = 1, n do
  local k, kind = KEYS[i], kinds[i]
  if kind == 'g' then
    keep(k, charge[i])
  elseif kind == 'f' then
    redis.call('HSET', k, 'tries', charge[i], 'last', now)
    redis.call('PEXPIRE', k, math.ceil(arg(i, 4) * 1000))
  end
end
return 0
"""

# One global rate (GCRA, a burst of one second's worth): reserve the next slot and answer
# the microseconds to wait for it. KEYS[1]: the rate; ARGV: interval_s, burst_s.
PACE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local T, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local at = tat - burst
if at < now then at = now end
tat = tat + T
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) * 1000) + 1)
return math.ceil((at - now) * 1000000)
"""
