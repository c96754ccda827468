"""The lease scripts (Lua, run atomically by Redis). Times are Redis's own clock, in ms, so
nodes' clocks never matter; every key gets an expiry too, so a dead deployment's keys go."""

# KEYS: workers, background, owner's running, owner's queued, replica 1..n
# ARGV: ttl_ms, member, workers cap, background cap (0: not a background job), owner's running
#       cap (0: none), weight, spare (1: leave a cap's last place to a chat turn), replica caps
# Returns the 1-based replica granted, or -1 workers full, -2 background share full, -3 the
# owner at their running cap, -4 every replica full. Granted: the owner's waiting entry goes.
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
if not fits(KEYS[1], tonumber(ARGV[3])) then return -1 end
local bcap = tonumber(ARGV[4])
if bcap > 0 and count(KEYS[2]) >= bcap then return -2 end
local ocap = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
local n = count(KEYS[3])
if ocap > 0 and n > 0 and n + w > ocap then return -3 end
local chosen = 0
for i = 5, #KEYS do
  if fits(KEYS[i], tonumber(ARGV[i + 3])) then
    chosen = i
    break
  end
end
if chosen == 0 then return -4 end
add(KEYS[1], m)
if bcap > 0 then add(KEYS[2], m) end
for j = 1, w do add(KEYS[3], m .. '#' .. j) end
if tonumber(ARGV[chosen + 3]) > 0 then add(KEYS[chosen], m) end
redis.call('ZREM', KEYS[4], m)
return chosen - 4
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
