"""The Lua scripts that keep the shared limits and leases atomic (run by Redis, one call each).

Times are Redis's own clock, so nodes' clocks never matter; every key gets an expiry too,
so a dead deployment's keys go."""

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
# the microseconds to wait for it. KEYS[1]: the rate; ARGV: interval_s, burst_s. (ACQUIRE
# takes the same slot with a lease, on the same key: no call of its own.)
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


# Leases: a place per in-flight upstream request (leases.py).

# KEYS: workers, background, owner's running, owner's queued, the upstream rate, replica 1..n
# ARGV: ttl_ms, member, workers cap, background cap (0: not a background job), owner's running
#       cap (0: none), weight, spare (1: leave a cap's last place to a chat turn), the upstream
#       rate's interval_s (0: not taken here) and burst_s, replica caps
# Returns {code, wait_us}: code the 1-based replica granted, or -1 workers full, -2 background
# share full, -3 the owner at their running cap, -4 every replica full. Granted: the owner's
# waiting entry goes, and the next slot of the upstream rate is taken (PACE's GCRA, in the
# same call): wait_us, how long the attempt waits for it before it is sent.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local exp = now + ttl
local m = ARGV[2]
local spare = tonumber(ARGV[7])
local function count(k)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  return redis.call('ZCARD', k)
end
local function fits(k, cap)
  if cap <= 0 then return true end
  local keep = 0
  if cap > 1 then keep = spare end
  return count(k) + 1 + keep <= cap
end
local function add(k, member)
  redis.call('ZADD', k, exp, member)
  redis.call('PEXPIRE', k, ttl * 3)
end
if not fits(KEYS[1], tonumber(ARGV[3])) then return {-1, 0} end
local bcap = tonumber(ARGV[4])
if bcap > 0 and count(KEYS[2]) >= bcap then return {-2, 0} end
local ocap = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
local n = count(KEYS[3])
if ocap > 0 and n > 0 and n + w > ocap then return {-3, 0} end
local chosen = 0
for i = 6, #KEYS do
  if fits(KEYS[i], tonumber(ARGV[i + 4])) then
    chosen = i
    break
  end
end
if chosen == 0 then return {-4, 0} end
add(KEYS[1], m)
if bcap > 0 then add(KEYS[2], m) end
for j = 1, w do add(KEYS[3], m .. '#' .. j) end
if tonumber(ARGV[chosen + 4]) > 0 then add(KEYS[chosen], m) end
redis.call('ZREM', KEYS[4], m)
local wait = 0
local T = tonumber(ARGV[8])
if T > 0 then
  local now_s = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local tat = tonumber(redis.call('GET', KEYS[5]) or now_s)
  if tat < now_s then tat = now_s end
  local at = tat - tonumber(ARGV[9])
  if at < now_s then at = now_s end
  tat = tat + T
  redis.call('SET', KEYS[5], tat, 'PX', math.ceil((tat - now_s) * 1000) + 1)
  wait = math.ceil((at - now_s) * 1000000)
end
return {chosen - 5, wait}
"""

# KEYS: the owner's queued; ARGV: ttl_ms, member, cap (0: none). 1 admitted, 0 at the cap.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return 1
"""

# Many releases in one call. KEYS: a key per lease; ARGV: channel, then per key its member,
# weight (0: the member itself; w: member#1..#w) and cap (0: nobody waits on it). A release
# from a cap that was full publishes on the channel, so waiting workers on every node look
# again (background jobs, which leave a cap's last place, wait for the nodes' backoff).
RELEASE = """
local freed = 0
for i = 1, #KEYS do
  local m = ARGV[3 * i - 1]
  local w = tonumber(ARGV[3 * i])
  local cap = tonumber(ARGV[3 * i + 1])
  local before = 0
  if cap > 0 then before = redis.call('ZCARD', KEYS[i]) end
  if w > 0 then
    local ms = {}
    for j = 1, w do ms[j] = m .. '#' .. j end
    redis.call('ZREM', KEYS[i], unpack(ms))
  else
    redis.call('ZREM', KEYS[i], m)
  end
  if cap > 0 and before >= cap then freed = 1 end
end
if freed == 1 then redis.call('PUBLISH', ARGV[1], '1') end
return freed
"""

# KEYS: a key per lease; ARGV: ttl_ms, mode ('XX': only leases still there; else add them
# back, after Redis came back empty), then each key's member.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  if ARGV[2] == 'XX' then
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 2])
  else
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 2])
  end
  redis.call('PEXPIRE', KEYS[i], ttl * 3)
end
return #KEYS
"""

# A conversation's running turn forgotten at its end, if it is still this one (a later turn
# may have registered). KEYS: conv:{id}:turn; ARGV: turn id.
UNHOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# A turn shared: its description (who may follow it), its owner among the running turns, its
# conversation held for it, the owner's heartbeat. KEYS: turn:{id}, turns:running,
# conv:{cid}:turn, node:{owner}; ARGV: turn id, owner, ttl_s, heartbeat ms, then field, value...
REGISTER = """
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
return 1
"""
