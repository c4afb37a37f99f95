-- lib.lua: helpers shared by the scripts; not a script of its own. The loader puts this
-- text where a script says "--! include lib.lua" (redis-py registers the result).
--
-- Keys of one scope (see guardrail/stores/redis.py), base = "{prefix}:{tag}:{scope}:":
--   base.."s"                live hash: all that reserve checks and takes, so that reserve
--                            reads it once and writes it once (and settle the same):
--     m, d                   token buckets per minute and per day: "<level> <updated_at>
--                            <capacity>"
--     ds, dp                 "<YYYY-MM-DD> <spent>": nano-dollars spent in the latest day
--                            settled into, and in the one before (the daily cap's spend,
--                            also for a host whose clock is still on yesterday; history is
--                            in day hashes)
--     ms:<YYYY-MM>           nano-dollars spent in a month (months past the retention go)
--     dh:<YYYY-MM-DD>        nano-dollars held in a day; mh:<YYYY-MM> in a month
--     h:<id>                 a hold: "<cost> <YYYY-MM-DD> <made at> <ttl> <1 on the
--                            reservation's first scope, else 0> <tokens>"; it expires at
--                            made at + ttl. Settle and release give back what the hold
--                            says, whatever the caller says.
--     x:<id>                 a hold that expired unsettled (first scope only): "<forget at>";
--                            its late settlement is applied once, then the marker goes
--     f                      how many holds are in flight (the max_in_flight limit)
--     g                      generation: the id of the reservation that made the hash; a
--                            settlement that finds another one knows the hash was lost
--     n                      when the next scan for expired holds and markers is due
--     e                      until when the hash lives (what its last EXPIRE asked for)
--   base.."d:YYYY-MM-DD"     day hash, for reports (written by settle): u:<model> = "<cost>
--                            <input tokens> <output tokens> <requests>" per model
--   base.."l"                loop hash: <request key> = "<failures> <first failure at>"
--   base.."done:YYYY-MM-DD"  settled ids of settlements that had no hold to take and no
--                            marker (the call was let through while the store was down, or
--                            the live hash was lost since); first scope only
-- Every key is created with a TTL, so Redis does not grow without bound. A settled
-- reservation leaves nothing behind: a replay of its settlement finds neither a hold nor a
-- marker in a hash of the same generation, and is skipped.

local unpack = unpack or table.unpack -- Redis runs Lua 5.1; fakeredis may run 5.4
-- Globals as locals: every global read is a table lookup, and these run on every call.
local call, tonumber, format, match, sub = redis.call, tonumber, string.format, string.match, string.sub
local PERIODS = { 60.0, 86400.0 }
local BUCKETS = { 'm', 'd' }
local BUCKET_MARGIN = 60
-- A live hash that already lives within EXTEND_SLACK seconds of what is asked keeps its
-- TTL (no EXPIRE on every call). Far below every margin, so no guarantee moves.
local EXTEND_SLACK = 5

-- Doubles as text that round-trip exactly (Lua's tostring keeps only 14 digits).
local function fmt(x)
  return format('%.17g', x)
end

-- Integers (below 2^53) as plain decimal text, never in exponent form.
local function int(x)
  return format('%.0f', x)
end

-- The same expression, in the same order, as guardrail.stores.base.bucket_level.
local function refill(level, at, now, cap, period)
  local elapsed = now - at
  if elapsed < 0 then
    elapsed = 0.0
  end
  local l = level + elapsed * cap / period
  if l < cap then
    return l
  end
  return cap
end

-- The writes that return a hold (`hold`, the value of h:<id> in `key`) to the held
-- counters and the in-flight count, whatever day the caller thinks it was held on:
-- `day` and the counters read for it (`dh`, `mh`) and `in_flight` (field f). Returns the
-- fields to HSET and the tokens the hold took.
local function unhold(key, hold, day, dh, mh, in_flight)
  local cost, held_day, tokens = match(hold, '^(%S+) (%S+) %S+ %S+ %S+ (%S+)$')
  local dh_field, mh_field = 'dh:' .. held_day, 'mh:' .. sub(held_day, 1, 7)
  if held_day ~= day then -- held on another day than the caller says (a retried reserve)
    local h = call('HMGET', key, dh_field, mh_field)
    dh, mh = h[1], h[2]
  end
  cost = tonumber(cost)
  return {
    dh_field,
    int(tonumber(dh or '0') - cost),
    mh_field,
    int(tonumber(mh or '0') - cost),
    'f',
    int(tonumber(in_flight or '1') - 1),
  }, tonumber(tokens)
end

-- The daily cap's spend on `day`, from the fields ds and dp.
local function spent_on(day, ds, dp)
  for _, slot in ipairs({ ds, dp }) do
    if slot then
      local d, x = match(slot, '^(%S+) (%S+)$')
      if d == day then
        return x
      end
    end
  end
  return '0'
end

-- HDEL or HSET `items` on `key`, at most 1000 arguments per call (Lua's unpack has a
-- limit of about 8000).
local function batched(command, key, items)
  for first = 1, #items, 1000 do
    call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
end

-- Seconds until a bucket at `level` is full again (a full bucket is the same as none).
local function full_in(level, cap, period)
  if cap <= 0 or level >= cap then
    return 0
  end
  return (cap - level) * period / cap
end

-- Append the writes that keep `live` alive until `want` (POSIX seconds; `text`, if given,
-- is how the caller wrote it) to `fields`, when its last EXPIRE (field e, `e`) asked for
-- less; returns the TTL to set after the HSET, or nil.
local function keep_until(fields, e, want, now, text)
  if e and want <= tonumber(e) + EXTEND_SLACK then
    return nil
  end
  fields[#fields + 1] = 'e'
  fields[#fields + 1] = text or fmt(want)
  return math.ceil(want - now)
end

-- The TTL work of a write to a live hash: keep it past `keep_text` (the month and its
-- retention, as the caller wrote it) and past `want` (a bucket's refill, or nil).
local function keep_live(fields, e, keep_text, want, now)
  if e == keep_text and want == nil then
    return nil -- the common case: nothing to read or compare
  end
  local keep = tonumber(keep_text)
  if want and want > keep then
    return keep_until(fields, e, want, now)
  end
  return keep_until(fields, e, keep, now, keep_text)
end

-- Add `delta` tokens to (negative: take them from) each bucket of a scope that exists;
-- `values` are the fields m and d as read. Appends the writes to `fields`; returns the
-- longest time until a bucket is full again.
local function refund(fields, values, delta)
  local longest = 0
  for i, b in ipairs(BUCKETS) do
    if values[i] then
      local l, at, cap = match(values[i], '^(%S+) (%S+) (%S+)$')
      local level = tonumber(l) + delta
      fields[#fields + 1] = b
      fields[#fields + 1] = fmt(level) .. ' ' .. at .. ' ' .. cap
      local t = full_in(level, tonumber(cap), PERIODS[i])
      if t > longest then
        longest = t
      end
    end
  end
  return longest
end

-- The rare path, when field n is due: expired holds go back to the held counters of their
-- day and month (their first scope keeps a marker x:<id> for `forget_after` seconds, so a
-- late settlement is still applied, once); old markers, months past the retention and
-- empty counters go. No sweeper process is needed: every script runs this on the live
-- hashes it touches.
local function scan(live, now, forget_after, oldest_month)
  local flat = call('HGETALL', live)
  local values, freed, dels, sets = {}, {}, {}, {}
  local soonest, latest, e
  local gone = 0 -- holds that expired: no longer in flight
  local function due(t)
    if soonest == nil or t < soonest then
      soonest = t
    end
    if latest == nil or t > latest then
      latest = t
    end
  end
  for i = 1, #flat, 2 do
    values[flat[i]] = flat[i + 1]
  end
  for f, v in pairs(values) do
    local kind = sub(f, 1, 2)
    if kind == 'h:' then
      local cost, day, at, ttl, first = match(v, '^(%S+) (%S+) (%S+) (%S+) (%S+)')
      local expires = tonumber(at) + tonumber(ttl)
      if expires <= now then
        dels[#dels + 1] = f
        gone = gone + 1
        local c = tonumber(cost)
        local dh, mh = 'dh:' .. day, 'mh:' .. sub(day, 1, 7)
        freed[dh] = (freed[dh] or 0) + c
        freed[mh] = (freed[mh] or 0) + c
        if first == '1' then
          local forget = now + forget_after
          sets[#sets + 1] = 'x:' .. sub(f, 3)
          sets[#sets + 1] = fmt(forget)
          due(forget)
        end
      else
        due(expires)
      end
    elseif kind == 'x:' then
      if tonumber(v) <= now then
        dels[#dels + 1] = f
      else
        due(tonumber(v))
      end
    elseif kind == 'ms' and sub(f, 4) < oldest_month then
      dels[#dels + 1] = f -- a month past the retention
    end
  end
  -- Counters: take what the expired holds held; drop the empty ones.
  for f in pairs(values) do
    local kind = sub(f, 1, 3)
    if (kind == 'dh:' or kind == 'mh:') and freed[f] == nil then
      freed[f] = 0
    end
  end
  for f, c in pairs(freed) do
    local before = tonumber(values[f] or '0')
    local left = before - c
    if left == 0 then
      dels[#dels + 1] = f
    elseif left ~= before then
      sets[#sets + 1] = f
      sets[#sets + 1] = int(left)
    end
  end
  if gone > 0 then
    sets[#sets + 1] = 'f'
    sets[#sets + 1] = int(tonumber(values['f'] or gone) - gone)
  end
  if soonest then
    sets[#sets + 1] = 'n'
    sets[#sets + 1] = fmt(soonest)
    e = keep_until(sets, values['e'], latest + BUCKET_MARGIN, now)
  else
    dels[#dels + 1] = 'n'
  end
  batched('HDEL', live, dels)
  batched('HSET', live, sets)
  if e then
    call('EXPIRE', live, e)
  end
end

-- The loop hash of a scope (base.."l": field <request key> = "<failures> <first failure
-- at>"): a failed call counts one more failure (a new run once the window has passed), a
-- successful one clears them. `arg` is "<request key> <window> <0|1 failed> <now>" or "-".
-- The hash lives a window past its latest failure, and is dropped whole past 10,000
-- requests (forgetting loops, never refusing more).
local function loop_outcome(live, arg)
  if not arg or arg == '-' then
    return
  end
  local lkey, lwindow, failed, lnow = match(arg, '^(%S+) (%S+) (%S+) (%S+)$')
  local key = sub(live, 1, -2) .. 'l'
  local seen = call('HGET', key, lkey)
  if failed ~= '1' then
    if seen then
      call('HDEL', key, lkey)
    end
    return
  end
  local n, first = 1, lnow
  if seen then
    local a, b = match(seen, '^(%S+) (%S+)$')
    if tonumber(b) + tonumber(lwindow) > tonumber(lnow) then
      n, first = tonumber(a) + 1, b
    end
  end
  call('HSET', key, lkey, int(n) .. ' ' .. first)
  call('EXPIRE', key, math.ceil(tonumber(lwindow)) + 60)
  if call('HLEN', key) > 10000 then
    call('DEL', key)
  end
end
