-- release.lua: give a reservation back whole (the call failed without usage).
-- KEYS: five per scope of the reservation (i = 0 .. nscopes-1), then one:
--   KEYS[5i+1] = day hash, KEYS[5i+2] = month hash (unused here; kept for one layout)
--   KEYS[5i+3] = holds zset, KEYS[5i+4] = holds hash, KEYS[5i+5] = token buckets hash
--   KEYS[#KEYS] = settled ids of the first scope     {prefix}:{tag}:{scope}:done:YYYY-MM-DD
-- ARGV[1] = now, POSIX seconds
-- ARGV[2] = reservation id
-- ARGV[3] = reserved tokens (given back to the buckets)
-- ARGV[4] = bucket TTL margin (seconds)
-- Returns 1 when released, 0 when it was settled, released or expired already.

--! include lib.lua

local rid, tokens, margin = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local nscopes = (#KEYS - 1) / 5
for i = 0, nscopes - 1 do
  purge(string.sub(KEYS[5 * i + 3], 1, -3), ARGV[1])
end
if redis.call('SISMEMBER', KEYS[#KEYS], rid) == 1 or redis.call('HEXISTS', KEYS[4], rid) == 0 then
  return 0
end
for i = 0, nscopes - 1 do
  drop_hold(string.sub(KEYS[5 * i + 3], 1, -3), rid)
  refund(KEYS[5 * i + 5], tokens, margin)
end
return 1
