-- extend.lua: keep a live call's hold (a stream still running) `ttl` seconds from now.
-- KEYS[i] = live hash of the reservation's i-th scope   {prefix}:{tag}:{scope}:s
-- ARGV[1] = reservation id
-- ARGV[2] = "<now> <ttl>": now in POSIX seconds, the seconds the hold lives from now
-- Returns 1 when extended, 0 when it is not held (settled, released, or expired: an
-- expired hold is left to the scan, which gives it back and leaves its marker).
-- A hold is "<cost> <YYYY-MM-DD> <made at> <ttl> <first> <tokens>" (lib.lua): its ttl
-- grows so that made at + ttl is now + the new ttl. The live hash outlives every hold
-- (its month and the retention), so its own TTL needs no change.

--! include lib.lua

local id = ARGV[1]
local now, ttl = match(ARGV[2], '^(%S+) (%S+)$')
now, ttl = tonumber(now), tonumber(ttl)
local field = 'h:' .. id
local renewed = {}
for i = 1, #KEYS do
  local hold = call('HGET', KEYS[i], field)
  if not hold then
    return 0
  end
  local cost, day, at, old, rest = match(hold, '^(%S+) (%S+) (%S+) (%S+) (.*)$')
  if tonumber(at) + tonumber(old) <= now then
    return 0
  end
  renewed[i] = cost .. ' ' .. day .. ' ' .. at .. ' '
    .. fmt(now - tonumber(at) + ttl) .. ' ' .. rest
end
for i = 1, #KEYS do
  call('HSET', KEYS[i], field, renewed[i])
end
return 1
