-- settle.lua: swap a reservation for what the call cost; applied once per reservation id.
-- KEYS[i] = live hash of the reservation's i-th scope   {prefix}:{tag}:{scope}:s
-- Also written, in the same hash slot (the same {tag}) as the scope's live hash:
--   {prefix}:{tag}:{scope}:d:YYYY-MM-DD     day hash of the reservation's day (usage)
--   {prefix}:{tag}:{scope}:done:YYYY-MM-DD  settled ids (first scope; rarely, see below)
-- ARGV[1] = reservation id
-- ARGV[2] = model name (usage is aggregated per model: field "u:<model>" of the day hash)
-- ARGV[3] = the generation reserve returned for the first scope ("" if the caller holds
--   nothing: the call was let through while the store was down)
-- ARGV[4] = "<day> <actual cost> <input tokens> <output tokens> <reserved tokens> <day TTL>
--   <settled-ids TTL> <now> <keep until>": the reservation's day (YYYY-MM-DD), cost in
--   integer nano-dollars, TTLs in seconds, now (whole seconds: it only sets TTLs) and keep
--   until (how long live hashes must at least live) in POSIX seconds
-- ARGV[5] = the loop outcome, "<request key> <window> <0|1 failed> <now>" or "-" (lib.lua)
-- Returns 1 when applied, 0 when this id was settled or released before (a replay).
--
-- Which settlement is the first: the one that takes the hold from the first scope's live
-- hash, or its expiry marker. Two kinds have none to take, or cannot tell: one whose
-- caller holds nothing (ARGV[3] = ""), and one whose reservation that hash never saw (a
-- hash lost since: another generation). Those are remembered in the settled-ids set.
-- Anything else is a replay. The hold's own cost, day and tokens are given back.

--! include lib.lua

local id, model, generation = ARGV[1], ARGV[2], ARGV[3]
local day, actual_text, inp, out, reserved_tokens, day_ttl, done_ttl, now, keep_text =
  match(ARGV[4], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
local actual = tonumber(actual_text)
inp, out, now = tonumber(inp), tonumber(out), tonumber(now)
local month = sub(day, 1, 7)
local hold_field, marker = 'h:' .. id, 'x:' .. id
local day_field, month_field, spent_field = 'dh:' .. day, 'mh:' .. month, 'ms:' .. month
local HOLD, MARKER, G, M, D, DH, MH, E, DS, DP, MS, F = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
local usage = 'u:' .. model

local function read(key)
  return call(
    'HMGET', key, hold_field, marker, 'g', 'm', 'd', day_field, month_field, 'e', 'ds', 'dp',
    spent_field, 'f'
  )
end

local first = read(KEYS[1])
local unheld = generation == ''
if unheld or not (first[HOLD] or first[MARKER]) then
  if not unheld and first[G] == generation then
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
  local tokens = tonumber(reserved_tokens)
  if v[HOLD] then
    dels[1] = hold_field
    fields, tokens = unhold(key, v[HOLD], day, v[DH], v[MH], v[F])
  end
  if i == 1 and v[MARKER] then
    dels[#dels + 1] = marker
  end
  fields[#fields + 1] = spent_field
  fields[#fields + 1] = int(tonumber(v[MS] or '0') + actual)
  -- ds holds the latest day settled into, dp the one before: the daily cap's spend (a
  -- settlement of an older day only goes to that day's hash).
  local ds_day, ds_spent, dp_day, dp_spent
  if v[DS] then
    ds_day, ds_spent = match(v[DS], '^(%S+) (%S+)$')
  end
  if v[DP] then
    dp_day, dp_spent = match(v[DP], '^(%S+) (%S+)$')
  end
  if ds_day == day then
    fields[#fields + 1] = 'ds'
    fields[#fields + 1] = day .. ' ' .. int(tonumber(ds_spent) + actual)
  elseif ds_day == nil or ds_day < day then
    if ds_day then
      fields[#fields + 1] = 'dp'
      fields[#fields + 1] = v[DS]
    end
    fields[#fields + 1] = 'ds'
    fields[#fields + 1] = day .. ' ' .. actual_text
  elseif dp_day == day then
    fields[#fields + 1] = 'dp'
    fields[#fields + 1] = day .. ' ' .. int(tonumber(dp_spent) + actual)
  elseif dp_day == nil or dp_day < day then
    fields[#fields + 1] = 'dp'
    fields[#fields + 1] = day .. ' ' .. actual_text
  end
  local want
  local delta = tokens - inp - out
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
loop_outcome(KEYS[1], ARGV[5])
return 1
