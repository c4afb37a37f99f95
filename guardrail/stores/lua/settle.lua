-- settle.lua: swap a reservation for what the call cost; applied once per reservation id.
-- KEYS[i] = live hash of the reservation's i-th scope   {prefix}:{tag}:{scope}:s
-- Also written, in the same hash slot (the same {tag}) as the scope's live hash:
--   {prefix}:{tag}:{scope}:d:YYYY-MM-DD     day hash of the reservation's day (usage)
--   {prefix}:{tag}:{scope}:done:YYYY-MM-DD  settled ids (first scope; rarely, see below)
-- ARGV[1] = reservation id
-- ARGV[2] = model name (usage is aggregated per model: field "u:<model>" of the day hash)
-- ARGV[3] = the generation reserve returned for the first scope ("" if never reserved)
-- ARGV[4] = "<reserved cost> <day> <actual cost> <input tokens> <output tokens> <tokens
--   back> <day TTL> <settled-ids TTL> <now> <keep until>": costs in integer nano-dollars,
--   the reservation's day (YYYY-MM-DD), tokens to give back to the buckets (reserved -
--   used; negative takes more), TTLs in seconds, now (whole seconds: it only sets TTLs)
--   and keep until (how long live hashes must at least live) in POSIX seconds
-- Returns 1 when applied, 0 when this id was settled or released before (a replay).
--
-- Which settlement is the first: the one that takes the hold from the first scope's live
-- hash, or its expiry marker; with neither, one whose reservation that hash never saw (a
-- call let through while the store was down, or a hash lost since: another generation)
-- is remembered in the settled-ids set; anything else is a replay.

--! include lib.lua

local id, model, generation = ARGV[1], ARGV[2], ARGV[3]
local reserved_text, day, actual_text, inp, out, delta, day_ttl, done_ttl, now, keep_text =
  match(ARGV[4], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
local reserved, actual = tonumber(reserved_text), tonumber(actual_text)
inp, out, delta, now = tonumber(inp), tonumber(out), tonumber(delta), tonumber(now)
local month = sub(day, 1, 7)
local hold_field, marker = 'h:' .. id, 'x:' .. id
local day_field, month_field, spent_field = 'dh:' .. day, 'mh:' .. month, 'ms:' .. month
local HOLD, MARKER, G, M, D, DH, MH, E, DS, MS = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
local usage = 'u:' .. model

local function read(key)
  return call(
    'HMGET', key, hold_field, marker, 'g', 'm', 'd', day_field, month_field, 'e', 'ds', spent_field
  )
end

local first = read(KEYS[1])
if not (first[HOLD] or first[MARKER]) then
  if first[G] == generation then
    return 0 -- settled or released before
  end
  local done = sub(KEYS[1], 1, -2) .. 'done:' .. day
  if call('SADD', done, id) == 0 then
    return 0
  end
  call('EXPIRE', done, done_ttl)
end

for i = 1, #KEYS do
  local key = KEYS[i]
  local v = first
  if i > 1 then
    v = read(key)
  end
  -- The live hash: drop the hold (if it is still there), count the spend, give tokens
  -- back or take more.
  local fields, dels = {}, {}
  if v[HOLD] then
    dels[1] = hold_field
    fields = {
      day_field,
      int(tonumber(v[DH] or '0') - reserved),
      month_field,
      int(tonumber(v[MH] or '0') - reserved),
    }
  end
  if i == 1 and v[MARKER] then
    dels[#dels + 1] = marker
  end
  fields[#fields + 1] = spent_field
  fields[#fields + 1] = int(tonumber(v[MS] or '0') + actual)
  -- ds follows the latest day settled into (a late settlement of an earlier day only
  -- goes to that day's hash: no cap looks at a past day).
  local ds_day, ds_spent
  if v[DS] then
    ds_day, ds_spent = match(v[DS], '^(%S+) (%S+)$')
  end
  if ds_day == day then
    fields[#fields + 1] = 'ds'
    fields[#fields + 1] = day .. ' ' .. int(tonumber(ds_spent) + actual)
  elseif ds_day == nil or ds_day < day then
    fields[#fields + 1] = 'ds'
    fields[#fields + 1] = day .. ' ' .. actual_text
  end
  local want
  if delta ~= 0 then
    local full = refund(fields, { v[M], v[D] }, delta)
    if full > 86400 - BUCKET_MARGIN then -- in debt: it may outlive the month's keep
      want = now + full + BUCKET_MARGIN
    end
  end
  local ttl = keep_live(fields, v[E], keep_text, want, now)
  call('HSET', key, unpack(fields))
  if ttl then
    call('EXPIRE', key, ttl)
  end
  if #dels > 0 then
    call('HDEL', key, unpack(dels))
  end
  -- The day hash: usage per model, for reports.
  local day_key = sub(key, 1, -2) .. 'd:' .. day
  local u = call('HGET', day_key, usage)
  local c, n_in, n_out, n = 0, 0, 0, 0
  if u then
    local a, b, x, y = match(u, '^(%S+) (%S+) (%S+) (%S+)$')
    c, n_in, n_out, n = tonumber(a), tonumber(b), tonumber(x), tonumber(y)
  end
  call(
    'HSET',
    day_key,
    usage,
    int(c + actual) .. ' ' .. int(n_in + inp) .. ' ' .. int(n_out + out) .. ' ' .. int(n + 1)
  )
  if not u then
    call('EXPIRE', day_key, day_ttl) -- a new key, or a new model in it
  end
end
return 1
