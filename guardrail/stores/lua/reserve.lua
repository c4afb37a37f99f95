-- reserve.lua: hold a call's worst-case cost and tokens on every scope, all or nothing.
-- KEYS: five per scope, in the request's order (i = 0 .. nscopes-1):
--   KEYS[5i+1] = day hash of today          {prefix}:{tag}:{scope}:d:YYYY-MM-DD
--   KEYS[5i+2] = month hash of this month   {prefix}:{tag}:{scope}:m:YYYY-MM
--   KEYS[5i+3] = holds zset                 {prefix}:{tag}:{scope}:hz
--   KEYS[5i+4] = holds hash                 {prefix}:{tag}:{scope}:hh
--   KEYS[5i+5] = token buckets hash         {prefix}:{tag}:{scope}:tb
-- ARGV[1] = now, POSIX seconds (the caller's clock, exact float text)
-- ARGV[2] = reservation id
-- ARGV[3] = cost to hold, integer nano-dollars
-- ARGV[4] = tokens to take from the buckets
-- ARGV[5] = expires_at, POSIX seconds
-- ARGV[6] = today, YYYY-MM-DD (the store's time zone)
-- ARGV[7] = day key TTL, ARGV[8] = month key TTL, ARGV[9] = holds TTL (seconds)
-- ARGV[10] = bucket TTL margin (seconds)
-- ARGV[11 + 4i .. 14 + 4i] = scope i's daily cap, monthly cap (nanos), tokens per minute,
--   tokens per day; "" = no limit
-- Returns {1} when held (also when this id is already held: a retried call), or the first
-- limit without room: {0, scope index (1-based), 1|2, spent, held} for daily|monthly spend,
-- {0, scope index, 3|4, bucket level} for tokens per minute|day.

--! include lib.lua

local now = tonumber(ARGV[1])
local rid, cost, tokens = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local margin = tonumber(ARGV[10])
local nscopes = #KEYS / 5

if redis.call('HEXISTS', KEYS[4], rid) == 1 then
  return { 1 }
end
for i = 0, nscopes - 1 do
  purge(string.sub(KEYS[5 * i + 3], 1, -3), ARGV[1])
end

-- Check every limit of every scope before taking anything.
local taken = {}
for i = 0, nscopes - 1 do
  local k, a = 5 * i, 11 + 4 * i
  for w = 1, 2 do
    local cap = tonumber(ARGV[a + w - 1])
    if cap then
      local v = redis.call('HMGET', KEYS[k + w], 'spent', 'held')
      local spent, held = v[1] or '0', v[2] or '0'
      if tonumber(spent) + tonumber(held) + cost > cap then
        return { 0, i + 1, w, spent, held }
      end
    end
  end
  for b = 1, 2 do
    local cap = tonumber(ARGV[a + 1 + b])
    if cap then
      local tb, name = KEYS[k + 5], BUCKETS[b]
      local v = redis.call('HMGET', tb, name .. 'l', name .. 't')
      local level, at = tonumber(v[1]), tonumber(v[2])
      if level == nil or at == nil then
        level, at = cap, now
      end
      level = refill(level, at, now, cap, PERIODS[b])
      if tokens > level then
        return { 0, i + 1, 2 + b, fmt(level) }
      end
      taken[#taken + 1] = { tb, name, level, cap }
    end
  end
end

-- Every check passed: take everything.
for _, t in ipairs(taken) do
  redis.call('HSET', t[1], t[2] .. 'l', fmt(t[3] - tokens), t[2] .. 't', ARGV[1], t[2] .. 'c', t[4])
end
for i = 0, nscopes - 1 do
  local k = 5 * i
  redis.call('HINCRBY', KEYS[k + 1], 'held', ARGV[3])
  redis.call('EXPIRE', KEYS[k + 1], ARGV[7])
  redis.call('HINCRBY', KEYS[k + 2], 'held', ARGV[3])
  redis.call('EXPIRE', KEYS[k + 2], ARGV[8])
  redis.call('ZADD', KEYS[k + 3], ARGV[5], rid)
  redis.call('HSET', KEYS[k + 4], rid, ARGV[3] .. ' ' .. ARGV[6])
  redis.call('EXPIRE', KEYS[k + 3], ARGV[9])
  redis.call('EXPIRE', KEYS[k + 4], ARGV[9])
end
for _, t in ipairs(taken) do
  expire_bucket(t[1], margin)
end
return { 1 }
