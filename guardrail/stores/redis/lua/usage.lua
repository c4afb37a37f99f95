-- usage.lua: one scope's usage in one day, after returning its expired holds.
-- KEYS[1] = day hash     {prefix}:{tag}:{scope}:d:YYYY-MM-DD
-- KEYS[2] = live hash    {prefix}:{tag}:{scope}:s
-- ARGV[1] = "<now> <forget after> <oldest month>": POSIX seconds, seconds an expired
--   hold's marker is kept, the oldest month whose spend a scan keeps (YYYY-MM)
-- Returns {HGETALL of the day hash, the month's spent, the day's held (nano-dollars)}.

--! include lib.lua

local now, forget_after, oldest = match(ARGV[1], '^(%S+) (%S+) (%S+)$')
local day = sub(KEYS[1], -10)
local due = call('HGET', KEYS[2], 'n')
if due and tonumber(due) <= tonumber(now) then
  scan(KEYS[2], tonumber(now), tonumber(forget_after), oldest)
end
local v = call('HMGET', KEYS[2], 'ms:' .. sub(day, 1, 7), 'dh:' .. day)
return { call('HGETALL', KEYS[1]), v[1] or '0', v[2] or '0' }
