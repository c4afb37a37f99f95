-- release.lua: give a reservation back whole (the call failed without usage).
-- KEYS[i] = live hash of the reservation's i-th scope   {prefix}:{tag}:{scope}:s
-- ARGV[1] = reservation id
-- ARGV[2] = "<now> <day> <forget after> <oldest month>": now in POSIX seconds, the
--   reservation's day (YYYY-MM-DD), seconds an expired hold's marker is kept, the oldest
--   month whose spend a scan keeps (YYYY-MM)
-- ARGV[3] = the loop outcome, "<request key> <window> <0|1 failed> <now>" or "-" (lib.lua)
-- Returns 1 when released, 0 when it was settled, released or expired already. What is
-- given back (cost, tokens, and the day it was held on) is what the hold says.

--! include lib.lua

local id = ARGV[1]
local now, day, forget_after, oldest = match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+)$')
now = tonumber(now)
local hold_field = 'h:' .. id
local day_field, month_field = 'dh:' .. day, 'mh:' .. sub(day, 1, 7)
local N, HOLD, M, D, DH, MH, F = 1, 2, 3, 4, 5, 6, 7

local function read(key)
  return call('HMGET', key, 'n', hold_field, 'm', 'd', day_field, month_field, 'f')
end

-- Expired holds go first: an expired reservation is gone, its tokens are not given back.
local live = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local v = read(key)
  if v[N] and tonumber(v[N]) <= now then
    scan(key, now, tonumber(forget_after), oldest)
    v = read(key)
  end
  if i == 1 and not v[HOLD] then
    return 0 -- not held: settled, released or expired (holds come and go on every scope)
  end
  live[i] = v
end
local tokens
for i = 1, #KEYS do
  local key, v = KEYS[i], live[i]
  local fields = {}
  if v[HOLD] then
    fields, tokens = unhold(key, v[HOLD], day, v[DH], v[MH], v[F])
    call('HDEL', key, hold_field)
  end
  if tokens ~= 0 then -- the first scope's hold says how many (every scope took as many)
    refund(fields, { v[M], v[D] }, tokens)
  end
  if #fields > 0 then
    call('HSET', key, unpack(fields))
  end
end
loop_outcome(KEYS[1], ARGV[3])
return 1
