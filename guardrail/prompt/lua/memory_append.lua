-- memory_append.lua: append messages to a shared conversation window, evicting whole
-- turns oldest first so that the window's tokens stay within a limit (RedisConversationMemory).
-- KEYS[1] = the window: a list of "<tokens>\t<opens a turn: 0|1>\t<message JSON>" entries
-- KEYS[2] = the window's running token total (a string integer)
-- ARGV[1] = the window's limit in tokens
-- ARGV[2] = TTL of both keys in milliseconds (0: none), refreshed on every append
-- ARGV[3..] = the new entries, oldest first
-- Returns {1, evicted count, new total, evicted entries...} when appended, or
-- {0, tokens the newest turn needs, limit} when even the newest turn alone does not fit
-- (nothing is changed then).
--
-- A group is an entry and everything after it up to the next entry that opens a turn; the
-- last group (the newest turn) is never evicted. The scan starts at the oldest entry and
-- stops as soon as enough is freed: an append costs the entries it evicts, not the list.

local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local old = redis.call('LLEN', KEYS[1])
local new_tokens, new_opens = {}, {}
local added = 0
for i = 3, #ARGV do
  local t, s = string.match(ARGV[i], '^(%d+)\t([01])\t')
  new_tokens[#new_tokens + 1] = tonumber(t)
  new_opens[#new_opens + 1] = s == '1'
  added = added + tonumber(t)
end
local size = old + #new_tokens

local function entry(i) -- 0-based over the old entries then the new ones
  if i >= old then
    return new_tokens[i - old + 1], new_opens[i - old + 1]
  end
  local t, s = string.match(redis.call('LINDEX', KEYS[1], i), '^(%d+)\t([01])\t')
  return tonumber(t), s == '1'
end

local excess = total + added - limit
local cut, freed = 0, 0
while freed < excess do
  local group = entry(cut)
  local j = cut + 1
  while j < size do
    local t, opens = entry(j)
    if opens then break end
    group = group + t
    j = j + 1
  end
  if j >= size then
    return {0, total + added - freed, limit}
  end
  freed = freed + group
  cut = j
end

for first = 3, #ARGV, 1000 do -- in batches: unpack has a stack limit
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
local evicted = {}
if cut > 0 then
  evicted = redis.call('LRANGE', KEYS[1], 0, cut - 1)
  redis.call('LTRIM', KEYS[1], cut, -1)
end
total = total + added - freed
redis.call('SET', KEYS[2], total)
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local reply = {1, cut, total}
for i = 1, #evicted do
  reply[#reply + 1] = evicted[i]
end
return reply
