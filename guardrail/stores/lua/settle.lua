-- settle.lua: swap a reservation for what the call cost; applied once per reservation id.
-- KEYS: four per scope of the reservation (i = 0 .. nscopes-1), then one:
--   KEYS[4i+1] = day hash of the reservation's day   {prefix}:{tag}:{scope}:d:YYYY-MM-DD
--   KEYS[4i+2] = month hash of its month             {prefix}:{tag}:{scope}:m:YYYY-MM
--   KEYS[4i+3] = holds zset, KEYS[4i+4] = token buckets hash
--   KEYS[#KEYS] = settled ids of the first scope     {prefix}:{tag}:{scope}:done:YYYY-MM-DD
-- ARGV[1] = reservation id
-- ARGV[2] = reserved cost, integer nano-dollars
-- ARGV[3] = the reservation's day, YYYY-MM-DD
-- ARGV[4] = actual cost, integer nano-dollars
-- ARGV[5] = input tokens, ARGV[6] = output tokens
-- ARGV[7] = model name (usage is aggregated per model)
-- ARGV[8] = tokens to give back to the buckets (reserved - used; negative takes more)
-- ARGV[9] = day key TTL, ARGV[10] = month key TTL, ARGV[11] = settled-ids TTL (seconds)
-- Returns 1 when applied, 0 when this id was settled before (a replay).

--! include lib.lua

local done = KEYS[#KEYS]
if redis.call('SADD', done, ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIRE', done, ARGV[11])

local hold = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]
local reserved, actual = tonumber(ARGV[2]), tonumber(ARGV[4])
local delta = tonumber(ARGV[8])
local model = ARGV[7]
local fields = { 'spent', 'held', 'c:' .. model, 'i:' .. model, 'o:' .. model, 'r:' .. model }
local adds = { actual, 0, actual, tonumber(ARGV[5]), tonumber(ARGV[6]), 1 }

for i = 0, (#KEYS - 1) / 4 - 1 do
  local k = 4 * i
  local day, month = KEYS[k + 1], KEYS[k + 2]
  -- Drop the hold, if it is still there (not expired and purged).
  local held = redis.call('ZREM', KEYS[k + 3], hold) == 1 and reserved or 0
  adds[2] = -held
  local v = redis.call('HMGET', day, unpack(fields))
  local out = {}
  for f = 1, #fields do
    out[2 * f - 1] = fields[f]
    out[2 * f] = int((tonumber(v[f]) or 0) + adds[f])
  end
  redis.call('HSET', day, unpack(out))
  redis.call('HINCRBY', month, 'spent', ARGV[4])
  if held ~= 0 then
    redis.call('HINCRBY', month, 'held', int(-held))
  end
  if held == 0 and reserved == 0 then
    -- No hold kept these keys alive (a call let through while the store was down).
    redis.call('EXPIRE', day, ARGV[9])
    redis.call('EXPIRE', month, ARGV[10])
  elseif held == 0 then
    -- An expired hold: the keys may have expired too; refresh only those without a TTL.
    for w, key in ipairs({ day, month }) do
      if redis.call('TTL', key) < 0 then
        redis.call('EXPIRE', key, ARGV[8 + w])
      end
    end
  end
  refund(KEYS[k + 4], delta)
end
return 1
