-- release.lua: give a reservation back whole (the call failed without usage).
-- KEYS: four per scope of the reservation (i = 0 .. nscopes-1):
--   KEYS[4i+1] = day hash, KEYS[4i+2] = month hash of the reservation's day and month
--   KEYS[4i+3] = holds zset, KEYS[4i+4] = token buckets hash
-- ARGV[1] = now, POSIX seconds
-- ARGV[2] = reservation id
-- ARGV[3] = reserved cost, integer nano-dollars
-- ARGV[4] = the reservation's day, YYYY-MM-DD
-- ARGV[5] = reserved tokens (given back to the buckets)
-- Returns 1 when released, 0 when it was settled, released or expired already.

--! include lib.lua

local nscopes = #KEYS / 4
local hold = ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
for i = 0, nscopes - 1 do
  purge(string.sub(KEYS[4 * i + 3], 1, -3), ARGV[1])
end
if redis.call('ZREM', KEYS[3], hold) == 0 then
  return 0 -- not held: settled, released or expired (holds come and go on every scope)
end
for i = 0, nscopes - 1 do
  local k = 4 * i
  if i == 0 or redis.call('ZREM', KEYS[k + 3], hold) == 1 then
    if ARGV[3] ~= '0' then
      redis.call('HINCRBY', KEYS[k + 1], 'held', '-' .. ARGV[3])
      redis.call('HINCRBY', KEYS[k + 2], 'held', '-' .. ARGV[3])
    end
  end
  refund(KEYS[k + 4], tonumber(ARGV[5]))
end
return 1
