-- reserve.lua: hold a call's worst-case cost and tokens on every scope, all or nothing.
-- KEYS: four per scope, in the request's order (i = 0 .. nscopes-1):
--   KEYS[4i+1] = day hash of today         {prefix}:{tag}:{scope}:d:YYYY-MM-DD
--   KEYS[4i+2] = month hash of this month  {prefix}:{tag}:{scope}:m:YYYY-MM
--   KEYS[4i+3] = holds zset                {prefix}:{tag}:{scope}:hz
--   KEYS[4i+4] = token buckets hash        {prefix}:{tag}:{scope}:tb
-- ARGV[1] = reservation id
-- ARGV[2] = "<now> <cost> <tokens> <expires_at> <day TTL> <month TTL>": now and expires_at
--   in POSIX seconds (the caller's clock, exact float text), cost to hold in integer
--   nano-dollars, tokens to take from the buckets, key TTLs in seconds (holds live as long
--   as months)
-- ARGV[2 + i] = scope i's limits, "<daily cap> <monthly cap> <tokens per minute> <tokens
--   per day>" (caps in nano-dollars; "-" = no limit)
-- Today (YYYY-MM-DD, in the store's time zone) is the end of KEYS[1].
-- Returns {1} when held (also when this id is held already: a retried call), or the first
-- limit without room: {0, scope index (1-based), 1|2, spent, held} for daily|monthly spend,
-- {0, scope index, 3|4, bucket level} for tokens per minute|day.

--! include lib.lua

local now_text, cost_text, tokens_text, expires, day_ttl, month_ttl =
  string.match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
local now, cost, tokens = tonumber(now_text), tonumber(cost_text), tonumber(tokens_text)
local hold = ARGV[1] .. ' ' .. cost_text .. ' ' .. string.sub(KEYS[1], -10)
local ttls = { day_ttl, month_ttl }
local nscopes = #KEYS / 4

for i = 0, nscopes - 1 do
  purge(string.sub(KEYS[4 * i + 3], 1, -3), now_text)
end
if redis.call('ZADD', KEYS[3], 'NX', expires, hold) == 0 then
  return { 1 }
end

-- Check every limit of every scope before taking anything.
local fresh, buckets = {}, {}
for i = 0, nscopes - 1 do
  local k = 4 * i
  local limits = { string.match(ARGV[3 + i], '^(%S+) (%S+) (%S+) (%S+)$') }
  for w = 1, 2 do
    local cap = tonumber(limits[w])
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
  local caps = { tonumber(limits[3]), tonumber(limits[4]) }
  if caps[1] or caps[2] then
    local v = redis.call('HMGET', KEYS[k + 4], 'm', 'd')
    local levels = {}
    for b = 1, 2 do
      local cap = caps[b]
      if cap then
        local level, at
        if v[b] then
          local l, a = string.match(v[b], '^(%S+) (%S+)')
          level, at = tonumber(l), tonumber(a)
        end
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
      fields[#fields + 1] = name
      fields[#fields + 1] = fmt(lc[1]) .. ' ' .. now_text .. ' ' .. int(lc[2])
    end
  end
  redis.call('HSET', b[1], unpack(fields))
  expire_bucket(b[1], b[2], tonumber(expires) - now)
end
for i = 0, nscopes - 1 do
  local k = 4 * i
  for w = 1, 2 do
    local key = KEYS[k + w]
    local held = redis.call('HINCRBY', key, 'held', cost_text)
    -- A TTL when the key is new (read above, or first held with no cap to read for).
    if fresh[k + w] or (fresh[k + w] == nil and held == cost) then
      redis.call('EXPIRE', key, ttls[w])
    end
  end
  if i > 0 then
    redis.call('ZADD', KEYS[k + 3], expires, hold)
  end
  extend(KEYS[k + 3], tonumber(month_ttl))
end
return { 1 }
