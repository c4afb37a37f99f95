-- reserve.lua: hold a call's worst-case cost and tokens on every scope, all or nothing.
-- KEYS: four per scope, in the request's order (i = 0 .. nscopes-1):
--   KEYS[4i+1] = day hash of today         {prefix}:{tag}:{scope}:d:YYYY-MM-DD
--   KEYS[4i+2] = month hash of this month  {prefix}:{tag}:{scope}:m:YYYY-MM
--   KEYS[4i+3] = holds zset                {prefix}:{tag}:{scope}:hz
--   KEYS[4i+4] = token buckets hash        {prefix}:{tag}:{scope}:tb
-- ARGV[1] = now, POSIX seconds (the caller's clock, exact float text)
-- ARGV[2] = reservation id
-- ARGV[3] = cost to hold, integer nano-dollars
-- ARGV[4] = tokens to take from the buckets
-- ARGV[5] = expires_at, POSIX seconds
-- ARGV[6] = today, YYYY-MM-DD (in the store's time zone)
-- ARGV[7] = day key TTL, ARGV[8] = month key TTL (seconds; holds live as long as months)
-- ARGV[9 + 4i .. 12 + 4i] = scope i's daily cap, monthly cap (nanos), tokens per minute,
--   tokens per day; "" = no limit
-- Returns {1} when held (also when this id is held already: a retried call), or the first
-- limit without room: {0, scope index (1-based), 1|2, spent, held} for daily|monthly spend,
-- {0, scope index, 3|4, bucket level} for tokens per minute|day.

--! include lib.lua

local now = tonumber(ARGV[1])
local cost, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local hold = ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[6]
local nscopes = #KEYS / 4

for i = 0, nscopes - 1 do
  purge(string.sub(KEYS[4 * i + 3], 1, -3), ARGV[1])
end
if redis.call('ZADD', KEYS[3], 'NX', ARGV[5], hold) == 0 then
  return { 1 }
end

-- Check every limit of every scope before taking anything.
local fresh, buckets = {}, {}
for i = 0, nscopes - 1 do
  local k, a = 4 * i, 9 + 4 * i
  for w = 1, 2 do
    local cap = tonumber(ARGV[a + w - 1])
    if cap then
      local v = redis.call('HMGET', KEYS[k + w], 'spent', 'held')
      local spent, held = v[1] or '0', v[2] or '0'
      if tonumber(spent) + tonumber(held) + cost > cap then
        redis.call('ZREM', KEYS[3], hold)
        return { 0, i + 1, w, spent, held }
      end
      fresh[k + w] = not (v[1] or v[2])
    end
  end
  local caps = { tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]) }
  if caps[1] or caps[2] then
    local v = redis.call('HMGET', KEYS[k + 4], 'ml', 'mt', 'dl', 'dt')
    local levels = {}
    for b = 1, 2 do
      local cap = caps[b]
      if cap then
        local level, at = tonumber(v[2 * b - 1]), tonumber(v[2 * b])
        if level == nil or at == nil then
          level, at = cap, now
        end
        level = refill(level, at, now, cap, PERIODS[b])
        if tokens > level then
          redis.call('ZREM', KEYS[3], hold)
          return { 0, i + 1, 2 + b, fmt(level) }
        end
        levels[b] = { level, cap }
      end
    end
    buckets[#buckets + 1] = { KEYS[k + 4], levels }
  end
end

-- Every check passed: take everything.
for _, b in ipairs(buckets) do
  local fields = {}
  for i, name in ipairs(BUCKETS) do
    local lc = b[2][i]
    if lc then
      lc[1] = lc[1] - tokens
      fields[#fields + 1] = name .. 'l'
      fields[#fields + 1] = fmt(lc[1])
      fields[#fields + 1] = name .. 't'
      fields[#fields + 1] = ARGV[1]
      fields[#fields + 1] = name .. 'c'
      fields[#fields + 1] = int(lc[2])
    end
  end
  redis.call('HSET', b[1], unpack(fields))
  expire_bucket(b[1], b[2])
end
for i = 0, nscopes - 1 do
  local k = 4 * i
  for w = 1, 2 do
    local key = KEYS[k + w]
    local held = redis.call('HINCRBY', key, 'held', ARGV[3])
    -- A TTL when the key is new (read above, or first held with no cap to read for).
    if fresh[k + w] or (fresh[k + w] == nil and held == cost) then
      redis.call('EXPIRE', key, ARGV[6 + w])
    end
  end
  if i > 0 then
    redis.call('ZADD', KEYS[k + 3], ARGV[5], hold)
  end
  redis.call('EXPIRE', KEYS[k + 3], ARGV[8])
end
return { 1 }
