-- settle.lua: swap a reservation for what the call cost; applied once per reservation id.
-- KEYS: four per scope of the reservation (i = 0 .. nscopes-1), then one:
--   KEYS[4i+1] = day hash of the reservation's day   {prefix}:{tag}:{scope}:d:YYYY-MM-DD
--   KEYS[4i+2] = month hash of its month             {prefix}:{tag}:{scope}:m:YYYY-MM
--   KEYS[4i+3] = holds zset, KEYS[4i+4] = token buckets hash
--   KEYS[#KEYS] = settled ids of the first scope     {prefix}:{tag}:{scope}:done:YYYY-MM-DD
-- ARGV[1] = reservation id
-- ARGV[2] = model name (usage is aggregated per model: field "u:<model>" of the day hash)
-- ARGV[3] = "<reserved cost> <day> <actual cost> <input tokens> <output tokens> <tokens
--   back> <day TTL> <month TTL> <settled-ids TTL>": costs in integer nano-dollars, the
--   reservation's day (YYYY-MM-DD), tokens to give back to the buckets (reserved - used;
--   negative takes more), TTLs in seconds
-- Returns 1 when applied, 0 when this id was settled before (a replay).

--! include lib.lua

local done = KEYS[#KEYS]
if redis.call('SADD', done, ARGV[1]) == 0 then
  return 0
end
local reserved_text, day_text, actual_text, inp, out, delta, day_ttl, month_ttl, done_ttl =
  string.match(ARGV[3], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
extend(done, tonumber(done_ttl))

local hold = ARGV[1] .. ' ' .. reserved_text .. ' ' .. day_text
local reserved, actual = tonumber(reserved_text), tonumber(actual_text)
local usage = 'u:' .. ARGV[2]
inp, out, delta = tonumber(inp), tonumber(out), tonumber(delta)
local ttls = { day_ttl, month_ttl }

for i = 0, (#KEYS - 1) / 4 - 1 do
  local k = 4 * i
  local day, month = KEYS[k + 1], KEYS[k + 2]
  -- Drop the hold, if it is still there (not expired and purged).
  local held = redis.call('ZREM', KEYS[k + 3], hold) == 1 and reserved or 0
  local v = redis.call('HMGET', day, 'spent', 'held', usage)
  local c, n_in, n_out, n = 0, 0, 0, 0
  if v[3] then
    local a, b, d, e = string.match(v[3], '^(%S+) (%S+) (%S+) (%S+)$')
    c, n_in, n_out, n = tonumber(a), tonumber(b), tonumber(d), tonumber(e)
  end
  redis.call(
    'HSET',
    day,
    'spent',
    int((tonumber(v[1]) or 0) + actual),
    'held',
    int((tonumber(v[2]) or 0) - held),
    usage,
    int(c + actual) .. ' ' .. int(n_in + inp) .. ' ' .. int(n_out + out) .. ' ' .. int(n + 1)
  )
  redis.call('HINCRBY', month, 'spent', actual_text)
  if held ~= 0 then
    redis.call('HINCRBY', month, 'held', int(-held))
  end
  if held == 0 and reserved == 0 then
    -- No hold kept these keys alive (a call let through while the store was down).
    redis.call('EXPIRE', day, day_ttl)
    redis.call('EXPIRE', month, month_ttl)
  elseif held == 0 then
    -- An expired hold: the keys may have expired too; refresh only those without a TTL.
    for w, key in ipairs({ day, month }) do
      if redis.call('TTL', key) < 0 then
        redis.call('EXPIRE', key, ttls[w])
      end
    end
  end
  refund(KEYS[k + 4], delta)
end
return 1
