-- usage.lua: one scope's usage in one day, after returning its expired holds.
-- KEYS[1] = day hash     {prefix}:{tag}:{scope}:d:YYYY-MM-DD
-- KEYS[2] = month hash   {prefix}:{tag}:{scope}:m:YYYY-MM
-- KEYS[3] = holds zset   {prefix}:{tag}:{scope}:hz
-- ARGV[1] = now, POSIX seconds
-- Returns {HGETALL of the day hash, the month's spent nano-dollars}.

--! include lib.lua

purge(string.sub(KEYS[3], 1, -3), ARGV[1])
return { redis.call('HGETALL', KEYS[1]), redis.call('HGET', KEYS[2], 'spent') or '0' }
