-- release.lua: give a reservation back whole (the call failed without usage).
-- KEYS[i] = live hash of the reservation's i-th scope   {prefix}:{tag}:{scope}:s
-- ARGV[1] = reservation id
-- ARGV[2] = "<now> <reserved cost> <day> <reserved tokens> <forget after>": now in POSIX
--   seconds, cost in integer nano-dollars, the reservation's day (YYYY-MM-DD), tokens to
--   give back to the buckets, seconds an expired hold's marker is kept
-- Returns 1 when released, 0 when it was settled, released or expired already.

--! include lib.lua

local id = ARGV[1]
local now, cost, day, tokens, forget_after =
  match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
now, cost, tokens = tonumber(now), tonumber(cost), tonumber(tokens)
local hold_field = 'h:' .. id
local day_field, month_field = 'dh:' .. day, 'mh:' .. sub(day, 1, 7)
local N, HOLD, M, D, DH, MH = 1, 2, 3, 4, 5, 6

-- Expired holds go first: an expired reservation is gone, its tokens are not given back.
local live = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local v = call('HMGET', key, 'n', hold_field, 'm', 'd', day_field, month_field)
  if v[N] and tonumber(v[N]) <= now then
    scan(key, now, tonumber(forget_after))
    v = call('HMGET', key, 'n', hold_field, 'm', 'd', day_field, month_field)
  end
  if i == 1 and not v[HOLD] then
    return 0 -- not held: settled, released or expired (holds come and go on every scope)
  end
  live[i] = v
end
for i = 1, #KEYS do
  local key, v = KEYS[i], live[i]
  local fields = {}
  if v[HOLD] then
    fields = {
      day_field,
      int(tonumber(v[DH] or '0') - cost),
      month_field,
      int(tonumber(v[MH] or '0') - cost),
    }
    call('HDEL', key, hold_field)
  end
  if tokens ~= 0 then
    refund(fields, { v[M], v[D] }, tokens)
  end
  if #fields > 0 then
    call('HSET', key, unpack(fields))
  end
end
return 1
