-- lib.lua: helpers shared by the scripts; not a script of its own. The loader puts this
-- text where a script says "--! include lib.lua" (redis-py registers the result).
--
-- Key layout of one scope (see guardrail/stores/redis.py), base = "{prefix}:{tag}:{scope}:":
--   base.."d:YYYY-MM-DD"  day hash: spent, held (nano-dollars), c:/i:/o:/r:<model> usage
--   base.."m:YYYY-MM"     month hash: spent, held
--   base.."hz"            zset: reservation id -> expires_at (POSIX seconds)
--   base.."hh"            hash: reservation id -> "<cost nanos> <YYYY-MM-DD>"
--   base.."tb"            hash: token buckets ml/mt/mc (per minute), dl/dt/dc (per day):
--                         level, updated_at, capacity
--   base.."done:YYYY-MM-DD"  set of settled reservation ids (idempotent settle)

local PERIODS = { 60.0, 86400.0 }
local BUCKETS = { 'm', 'd' }

-- Doubles as text that round-trip exactly (Lua's tostring keeps only 14 digits).
local function fmt(x)
  return string.format('%.17g', x)
end

-- The same expression, in the same order, as guardrail.stores.base.bucket_level.
local function refill(level, at, now, cap, period)
  local elapsed = now - at
  if elapsed < 0 then
    elapsed = 0.0
  end
  local l = level + elapsed * cap / period
  if l < cap then
    return l
  end
  return cap
end

-- A hold ("<cost> <day>") goes back to its day and month windows (if they still exist).
local function unhold(base, hold)
  local cost, day = string.match(hold, '^(%d+) (.+)$')
  local n = tonumber(cost)
  if n ~= 0 then
    for _, key in ipairs({ base .. 'd:' .. day, base .. 'm:' .. string.sub(day, 1, 7) }) do
      if redis.call('EXISTS', key) == 1 then
        redis.call('HINCRBY', key, 'held', -n)
      end
    end
  end
end

-- Expired holds of one scope return to its budget: no sweeper process needed.
local function purge(base, now)
  local hz, hh = base .. 'hz', base .. 'hh'
  local expired = redis.call('ZRANGEBYSCORE', hz, '-inf', now)
  for _, rid in ipairs(expired) do
    local hold = redis.call('HGET', hh, rid)
    if hold then
      unhold(base, hold)
      redis.call('HDEL', hh, rid)
    end
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', hz, '-inf', now)
  end
end

-- Drop one reservation's hold; false if it is not held (settled, released or expired).
local function drop_hold(base, rid)
  local hh = base .. 'hh'
  local hold = redis.call('HGET', hh, rid)
  if not hold then
    return false
  end
  unhold(base, hold)
  redis.call('HDEL', hh, rid)
  redis.call('ZREM', base .. 'hz', rid)
  return true
end

-- A bucket key lives until its fullest refill (a full bucket is the same as no key).
local function expire_bucket(tb, margin)
  local v = redis.call('HMGET', tb, 'ml', 'mc', 'dl', 'dc')
  local ttl = 0
  for i, period in ipairs(PERIODS) do
    local level, cap = tonumber(v[2 * i - 1]), tonumber(v[2 * i])
    if level and cap and cap > 0 then
      local full = (cap - level) * period / cap
      if full > ttl then
        ttl = full
      end
    end
  end
  redis.call('EXPIRE', tb, math.ceil(ttl) + margin)
end

-- Give tokens back to (or, if negative, take them from) every bucket of a scope.
local function refund(tb, delta, margin)
  if delta == 0 or redis.call('EXISTS', tb) == 0 then
    return
  end
  for _, b in ipairs(BUCKETS) do
    local level = redis.call('HGET', tb, b .. 'l')
    if level then
      redis.call('HSET', tb, b .. 'l', fmt(tonumber(level) + delta))
    end
  end
  expire_bucket(tb, margin)
end
