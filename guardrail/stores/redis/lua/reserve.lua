-- reserve.lua: hold a call's worst-case cost and tokens on every scope, all or nothing.
-- KEYS[i] = live hash of the request's i-th scope   {prefix}:{tag}:{scope}:s
-- ARGV[1] = reservation id
-- ARGV[2] = "<now> <cost> <tokens> <ttl> <keep until> <forget after> <today> <oldest
--   month>": POSIX
--   seconds (the caller's clock, exact float text) for now and keep until (how long live
--   hashes must at least live: past the month and any hold), cost to hold in integer
--   nano-dollars, tokens to take from the buckets, seconds the hold lives (it expires at
--   now + ttl, the same double the memory store computes), seconds an expired hold's
--   marker is kept, today (YYYY-MM-DD, in the store's time zone), the oldest month whose
--   spend a scan keeps (YYYY-MM: the retention)
-- ARGV[2 + i] = scope i's limits, "<daily cap> <monthly cap> <tokens per minute> <tokens
--   per day> <calls in flight>" (caps in nano-dollars; "-" = no limit)
-- ARGV[3 + #KEYS] = the loop check, "<request key> <limit> <window seconds>" or "-": refuse
--   when the first scope's loop hash ({prefix}:{tag}:{scope}:l, same slot) says this
--   request failed <limit> times since a first failure less than <window> ago
-- Returns the generation of the first scope's live hash (a string) when held (also when
-- this id is held already: a retried call), or the first limit without room: {0, scope index
-- (1-based), 1|2, spent, held} for daily|monthly spend, {0, scope index, 3|4, bucket
-- level} for tokens per minute|day, {0, scope index, 5, calls in flight}, {0, 1, 6,
-- failures, first failure at} for the loop check.

--! include lib.lua

local id = ARGV[1]
local now_text, cost_text, tokens_text, ttl_text, keep_text, forget_after, today, oldest =
  match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
local now, cost, tokens = tonumber(now_text), tonumber(cost_text), tonumber(tokens_text)
local expires = now + tonumber(ttl_text)
local month = sub(today, 1, 7)
local hold_field, day_field, month_field = 'h:' .. id, 'dh:' .. today, 'mh:' .. month
local spent_field = 'ms:' .. month
local N, M, D, G, E, DS, DP, DH, MH, MS, HOLD, F = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
local nscopes = #KEYS

local function read(key)
  return call(
    'HMGET', key, 'n', 'm', 'd', 'g', 'e', 'ds', 'dp', day_field, month_field, spent_field,
    hold_field, 'f'
  )
end

-- Read every scope's live hash (scanning it first when a scan is due).
local live = {}
for i = 1, nscopes do
  local key = KEYS[i]
  local v = read(key)
  if v[N] and tonumber(v[N]) <= now then
    scan(key, now, tonumber(forget_after), oldest)
    v = read(key)
  end
  if i == 1 and v[HOLD] then
    return v[G] or '' -- held already: a retried call
  end
  live[i] = v
end

-- The loop check: the same request failing again and again (see settle.lua).
local loop = ARGV[nscopes + 3]
if loop and loop ~= '-' then
  local lkey, llimit, lwindow = match(loop, '^(%S+) (%S+) (%S+)$')
  local seen = call('HGET', sub(KEYS[1], 1, -2) .. 'l', lkey)
  if seen then
    local n, first = match(seen, '^(%S+) (%S+)$')
    if tonumber(first) + tonumber(lwindow) > now and tonumber(n) >= tonumber(llimit) then
      return { 0, 1, 6, n, first }
    end
  end
end

-- Check every limit of every scope before taking anything.
local levels = {}
for i = 1, nscopes do
  local v = live[i]
  local limits = { match(ARGV[2 + i], '^(%S+) (%S+) (%S+) (%S+) (%S+)$') }
  for w = 1, 2 do
    local cap = tonumber(limits[w])
    if cap then
      local spent, held
      if w == 1 then
        spent, held = spent_on(today, v[DS], v[DP]), v[DH] or '0'
      else
        spent, held = v[MS] or '0', v[MH] or '0'
      end
      if tonumber(spent) + tonumber(held) + cost > cap then
        return { 0, i, w, spent, held }
      end
    end
  end
  levels[i] = {}
  for b = 1, 2 do
    local cap = tonumber(limits[2 + b])
    if cap then
      local level, at
      if v[M + b - 1] then
        local l, a = match(v[M + b - 1], '^(%S+) (%S+)')
        level, at = tonumber(l), tonumber(a)
      end
      if level == nil or at == nil then
        level, at = cap, now
      end
      level = refill(level, at, now, cap, PERIODS[b])
      if tokens > level then
        return { 0, i, 2 + b, fmt(level) }
      end
      levels[i][b] = { level, limits[2 + b] }
    end
  end
  local most = tonumber(limits[5])
  if most and not v[HOLD] and tonumber(v[F] or '0') + 1 > most then
    return { 0, i, 5, v[F] or '0' }
  end
end

-- Every check passed: take everything, one HSET per scope.
for i = 1, nscopes do
  local key, v = KEYS[i], live[i]
  local fields = {}
  if not v[HOLD] then
    fields = {
      hold_field,
      cost_text .. ' ' .. today .. ' ' .. now_text .. ' ' .. ttl_text .. ' '
        .. (i == 1 and '1 ' or '0 ') .. tokens_text,
      day_field,
      int(tonumber(v[DH] or '0') + cost),
      month_field,
      int(tonumber(v[MH] or '0') + cost),
      'f',
      int(tonumber(v[F] or '0') + 1),
    }
  end
  local want
  for b, name in ipairs(BUCKETS) do
    local lc = levels[i][b]
    if lc then
      local level = lc[1] - tokens
      fields[#fields + 1] = name
      fields[#fields + 1] = fmt(level) .. ' ' .. now_text .. ' ' .. lc[2]
      local full = now + full_in(level, tonumber(lc[2]), PERIODS[b]) + BUCKET_MARGIN
      if full > now + 86400 and (want == nil or full > want) then
        want = full -- in debt: it may outlive the month's keep
      end
    end
  end
  if not v[N] or expires < tonumber(v[N]) then
    fields[#fields + 1] = 'n'
    fields[#fields + 1] = fmt(expires)
  end
  if not v[G] then
    fields[#fields + 1] = 'g'
    fields[#fields + 1] = id
  end
  local ttl = keep_live(fields, v[E], keep_text, want, now)
  if #fields > 0 then
    call('HSET', key, unpack(fields))
  end
  if ttl then
    call('EXPIRE', key, ttl)
  end
end
return live[1][G] or id
