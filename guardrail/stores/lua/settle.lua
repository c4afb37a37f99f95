-- settle.lua: swap a reservation for what the call cost; applied once per reservation id.
-- KEYS: five per scope of the reservation (i = 0 .. nscopes-1), then one:
--   KEYS[5i+1] = day hash of the reservation's day   {prefix}:{tag}:{scope}:d:YYYY-MM-DD
--   KEYS[5i+2] = month hash of its month             {prefix}:{tag}:{scope}:m:YYYY-MM
--   KEYS[5i+3] = holds zset, KEYS[5i+4] = holds hash, KEYS[5i+5] = token buckets hash
--   KEYS[#KEYS] = settled ids of the first scope     {prefix}:{tag}:{scope}:done:YYYY-MM-DD
-- ARGV[1] = now, POSIX seconds
-- ARGV[2] = reservation id
-- ARGV[3] = actual cost, integer nano-dollars
-- ARGV[4] = input tokens, ARGV[5] = output tokens
-- ARGV[6] = model name (usage is aggregated per model)
-- ARGV[7] = tokens to give back to the buckets (reserved - used; negative takes more)
-- ARGV[8] = day key TTL, ARGV[9] = month key TTL, ARGV[10] = settled-ids TTL (seconds)
-- ARGV[11] = bucket TTL margin (seconds)
-- Returns 1 when applied, 0 when this id was settled before (a replay).

--! include lib.lua

local rid, model = ARGV[2], ARGV[6]
local delta, margin = tonumber(ARGV[7]), tonumber(ARGV[11])
local done = KEYS[#KEYS]
if redis.call('SADD', done, rid) == 0 then
  return 0
end
redis.call('EXPIRE', done, ARGV[10])

for i = 0, (#KEYS - 1) / 5 - 1 do
  local k = 5 * i
  local base = string.sub(KEYS[k + 3], 1, -3)
  drop_hold(base, rid)
  local day, month = KEYS[k + 1], KEYS[k + 2]
  redis.call('HINCRBY', day, 'spent', ARGV[3])
  redis.call('HINCRBY', day, 'c:' .. model, ARGV[3])
  redis.call('HINCRBY', day, 'i:' .. model, ARGV[4])
  redis.call('HINCRBY', day, 'o:' .. model, ARGV[5])
  redis.call('HINCRBY', day, 'r:' .. model, 1)
  redis.call('EXPIRE', day, ARGV[8])
  redis.call('HINCRBY', month, 'spent', ARGV[3])
  redis.call('EXPIRE', month, ARGV[9])
  refund(KEYS[k + 5], delta, margin)
  purge(base, ARGV[1])
end
return 1
