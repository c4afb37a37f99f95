-- lib.lua: helpers shared by the scripts; not a script of its own. The loader puts this
-- text where a script says "--! include lib.lua" (redis-py registers the result).
--
-- Keys of one scope (see guardrail/stores/redis.py), base = "{prefix}:{tag}:{scope}:":
--   base.."d:YYYY-MM-DD"     day hash: spent, held (nano-dollars); u:<model> = "<cost>
--                            <input tokens> <output tokens> <requests>" per model
--   base.."m:YYYY-MM"        month hash: spent, held
--   base.."hz"               zset of holds: "<id> <cost> <YYYY-MM-DD>" -> expires_at
--   base.."tb"               token buckets: m (per minute), d (per day) = "<level>
--                            <updated_at> <capacity>"; lives until full again and at
--                            least as long as any reservation that took from it
--   base.."done:YYYY-MM-DD"  set of settled reservation ids (first scope only)
-- Every key is created with a TTL, so Redis does not grow without bound.

local unpack = unpack or table.unpack -- Redis runs Lua 5.1; fakeredis may run 5.4
local PERIODS = { 60.0, 86400.0 }
local BUCKETS = { 'm', 'd' }
local BUCKET_MARGIN = 60
-- A key that already lives within EXTEND_SLACK seconds of the TTL asked for keeps its TTL:
-- a PTTL read instead of an EXPIRE write on every call (writes cost Redis several times
-- more). Far below BUCKET_MARGIN and every other margin, so no guarantee moves.
local EXTEND_SLACK = 5

-- Doubles as text that round-trip exactly (Lua's tostring keeps only 14 digits).
local function fmt(x)
  return string.format('%.17g', x)
end

-- Integers (below 2^53) as plain decimal text, never in exponent form.
local function int(x)
  return string.format('%.0f', x)
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

-- Expired holds of one scope go back to their day and month: no sweeper process needed.
local function purge(base, now)
  local hz = base .. 'hz'
  local expired = redis.call('ZRANGEBYSCORE', hz, '-inf', now)
  if #expired == 0 then
    return
  end
  for _, hold in ipairs(expired) do
    local cost, day = string.match(hold, '^.* (%d+) (%S+)$')
    if cost ~= '0' then
      for _, key in ipairs({ base .. 'd:' .. day, base .. 'm:' .. string.sub(day, 1, 7) }) do
        if redis.call('EXISTS', key) == 1 then
          redis.call('HINCRBY', key, 'held', '-' .. cost)
        end
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', hz, '-inf', now)
end

-- Make `key` live at least `ttl` seconds (never shorter than it already lives), give or
-- take EXTEND_SLACK.
local function extend(key, ttl)
  if redis.call('PTTL', key) < (ttl - EXTEND_SLACK) * 1000 then
    redis.call('EXPIRE', key, int(ttl))
  end
end

-- A token bucket key lives until the bucket would be full again (a full bucket is the
-- same as no key), and at least `floor` seconds (reserve: the reservation's life, so that
-- its settlement finds the bucket and takes a debt from it, exactly as the memory store
-- does); never shorter than it already lives. levels: {level, capacity} per bucket that
-- has a capacity.
local function expire_bucket(tb, levels, floor)
  local ttl = floor or 0
  for i, period in ipairs(PERIODS) do
    local lc = levels[i]
    if lc and lc[2] > 0 then
      local full = (lc[2] - lc[1]) * period / lc[2]
      if full > ttl then
        ttl = full
      end
    end
  end
  extend(tb, math.ceil(ttl) + BUCKET_MARGIN)
end

-- Give tokens back to (or, if negative, take them from) every bucket of a scope.
local function refund(tb, delta)
  if delta == 0 then
    return
  end
  local v = redis.call('HMGET', tb, 'm', 'd')
  local levels, fields = {}, {}
  for i, b in ipairs(BUCKETS) do
    if v[i] then
      local l, at, cap = string.match(v[i], '^(%S+) (%S+) (%S+)$')
      local level = tonumber(l) + delta
      fields[#fields + 1] = b
      fields[#fields + 1] = fmt(level) .. ' ' .. at .. ' ' .. cap
      levels[i] = { level, tonumber(cap) }
    end
  end
  if #fields > 0 then
    redis.call('HSET', tb, unpack(fields))
    expire_bucket(tb, levels)
  end
end
