//! The Lua scripts behind every multi-key move of the Redis transport.
//!
//! Each runs atomically on the server, so a client that dies mid-call
//! leaves either all of a move or none of it, and two clients racing on
//! the same entries (two promoters, two claimers) cannot both take one.
//! Every key a script touches is passed in KEYS and shares the
//! namespace's hash tag, so the scripts also run on Redis Cluster.
//! Nothing here reads the clock except through the arguments.

/// Dispatch a batch onto the priority streams, all or nothing.
///
/// KEYS[1..5]: the priority streams, critical first.
/// ARGV[1]: the bound of each stream; then pairs (priority index 0-4,
/// envelope JSON).
/// Returns the new entry ids in order, or `{"full", key}` when one stream
/// would pass its bound (nothing is added then).
pub const DISPATCH: &str = r#"
local len_max = tonumber(ARGV[1])
local adding = {0, 0, 0, 0, 0}
for i = 2, #ARGV, 2 do
  local p = tonumber(ARGV[i]) + 1
  adding[p] = adding[p] + 1
end
for p = 1, 5 do
  if adding[p] > 0 and redis.call('XLEN', KEYS[p]) + adding[p] > len_max then
    return {'full', KEYS[p]}
  end
end
local ids = {}
for i = 2, #ARGV, 2 do
  local p = tonumber(ARGV[i]) + 1
  ids[#ids + 1] = redis.call('XADD', KEYS[p], '*', 'e', ARGV[i + 1])
end
return ids
"#;

/// Claim up to `max` entries for one consumer: first entries whose lease
/// ran out (XAUTOCLAIM, when asked to reclaim), then new entries by
/// priority with aging.
///
/// KEYS[1..5]: the priority streams, critical first.
/// ARGV: group, consumer, max, aging_ms, reclaim (0/1), lease_ms.
///
/// The aging rule: the next new entry is the head (oldest undelivered
/// entry) of the stream that minimises `id_ms + priority_index × aging_ms`,
/// ties to the higher priority. An entry's id carries the time it was
/// added, so a BATCH entry (index 4) waits as if it had been added
/// `4 × aging_ms` later than it was: fresh work is served in strict
/// priority order, and an entry that has waited `k × aging_ms` longer than
/// the head `k` levels above it goes first — no flood starves BATCH.
///
/// When XINFO's `lag` shows at most one stream with undelivered entries,
/// they are read from it directly (nothing to rank); when a lag is
/// unknown, or several streams hold entries, the heads are ranked.
///
/// Returns `{entries, last}`: entries are `{priority index, id, payload or
/// false, delivery count}`; `last` holds each stream's last-delivered id
/// (for the caller's blocking wake-up read when nothing was claimed).
/// The consumer group is created (from id 0, MKSTREAM) when missing.
pub const CLAIM: &str = r#"
local group, consumer = ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])
local aging = tonumber(ARGV[4])
local reclaim = ARGV[5] == '1'
local lease_ms = ARGV[6]
local out = {}

local function payload(fields)
  if type(fields) ~= 'table' then return false end
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then return fields[j + 1] end
  end
  return false
end

local last = {}
-- Entries not yet delivered per stream, when Redis knows (XINFO's lag).
local lag = {}
for p = 1, 5 do
  local key = KEYS[p]
  local ld = nil
  if redis.call('EXISTS', key) == 1 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name, lid, l = nil, nil, nil
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then lid = g[j + 1] end
        if g[j] == 'lag' then l = g[j + 1] end
      end
      if name == group then
        ld = lid
        if type(l) == 'number' then lag[p] = l end
      end
    end
  end
  if ld == nil then
    redis.call('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
    ld = '0-0'
  end
  last[p] = ld
end

if reclaim then
  for p = 1, 5 do
    if #out >= max then break end
    local r = redis.call('XAUTOCLAIM', KEYS[p], group, consumer, lease_ms, '0-0', 'COUNT', max - #out)
    for _, e in ipairs(r[2]) do
      if type(e) == 'table' then
        local pend = redis.call('XPENDING', KEYS[p], group, e[1], e[1], 1)
        local count = 0
        if pend[1] then count = pend[1][4] end
        out[#out + 1] = {p - 1, e[1], payload(e[2]), count}
      end
    end
  end
end

local want = max - #out
-- When at most one stream has undelivered entries there is nothing to
-- rank: read them in order, without looking at the heads first.
local only, waiting = nil, 0
for p = 1, 5 do
  if lag[p] == nil then
    waiting = 2
  elseif lag[p] > 0 then
    waiting = waiting + 1
    only = p
  end
end
if want > 0 and waiting <= 1 then
  if only ~= nil then
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want, 'STREAMS', KEYS[only], '>')
    if r and r[1] then
      for _, e in ipairs(r[1][2]) do
        out[#out + 1] = {only - 1, e[1], payload(e[2]), 1}
      end
    end
  end
  want = 0
end
if want > 0 then
  local heads = {}
  for p = 1, 5 do
    local entries = redis.call('XRANGE', KEYS[p], '(' .. last[p], '+', 'COUNT', want)
    for k, e in ipairs(entries) do
      local ms = tonumber(string.match(e[1], '^(%d+)'))
      heads[#heads + 1] = {ms + (p - 1) * aging, p, k}
    end
  end
  table.sort(heads, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  local n = math.min(want, #heads)
  local take = {0, 0, 0, 0, 0}
  for i = 1, n do
    take[heads[i][2]] = take[heads[i][2]] + 1
  end
  local read = {{}, {}, {}, {}, {}}
  for p = 1, 5 do
    if take[p] > 0 then
      local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', take[p], 'STREAMS', KEYS[p], '>')
      if r and r[1] then read[p] = r[1][2] end
    end
  end
  -- Hand the entries out in rank order, not grouped by stream.
  local next_of = {1, 1, 1, 1, 1}
  for i = 1, n do
    local p = heads[i][2]
    local e = read[p][next_of[p]]
    next_of[p] = next_of[p] + 1
    if e then out[#out + 1] = {p - 1, e[1], payload(e[2]), 1} end
  end
end
return {out, last}
"#;

/// Report results: each is added to the results stream, then its task
/// entry is acknowledged and deleted — in one atomic step, so a worker
/// that dies cannot leave an acknowledged task without its result. An
/// announcement (a start, priority `-`) is only added: its task entry
/// stays pending until the attempt's report.
///
/// KEYS[1]: the results stream; KEYS[2..6]: the priority streams.
/// ARGV: group, results bound, then triples (priority index or `-`, task
/// entry id, result JSON), added in order.
/// Returns the number of results added, or `{"full", key}` (nothing done).
pub const REPORT: &str = r#"
local group = ARGV[1]
local len_max = tonumber(ARGV[2])
local n = (#ARGV - 2) / 3
if redis.call('XLEN', KEYS[1]) + n > len_max then
  return {'full', KEYS[1]}
end
local ids = {{}, {}, {}, {}, {}}
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'r', ARGV[i + 2])
  if ARGV[i] ~= '-' then
    local p = tonumber(ARGV[i]) + 1
    ids[p][#ids[p] + 1] = ARGV[i + 1]
  end
end
-- One XACK and one XDEL per stream, after every result is in.
for p = 1, 5 do
  if #ids[p] > 0 then
    redis.call('XACK', KEYS[p + 1], group, unpack(ids[p]))
    redis.call('XDEL', KEYS[p + 1], unpack(ids[p]))
  end
end
return n
"#;

/// Park an envelope until its due time, within the bound.
///
/// KEYS[1]: the delayed sorted set. ARGV: bound, due ms, member
/// (`"<priority index>:<envelope JSON>"`).
/// Returns 1, or `{"full", key}`.
pub const RETRY_LATER: &str = r#"
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return {'full', KEYS[1]}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"#;

/// Move due delayed entries onto their priority streams. ZREM and XADD of
/// one entry happen in the same atomic script, so two promoters never
/// dispatch an entry twice. An entry whose stream is at its bound stays
/// delayed for a later call.
///
/// KEYS[1]: the delayed sorted set; KEYS[2..6]: the priority streams;
/// KEYS[7]: the dead-letter stream, for a member without a priority.
/// ARGV: now ms, max entries to move, stream bound, dead-letter bound.
/// Returns the number moved.
pub const PROMOTE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local len_max = tonumber(ARGV[3])
local moved = 0
for _, m in ipairs(due) do
  local p = tonumber(string.sub(m, 1, 1))
  if p ~= nil and p >= 0 and p <= 4 then
    local key = KEYS[p + 2]
    if redis.call('XLEN', key) < len_max then
      redis.call('ZREM', KEYS[1], m)
      redis.call('XADD', key, '*', 'e', string.sub(m, 3))
      moved = moved + 1
    end
  else
    redis.call('ZREM', KEYS[1], m)
    redis.call('XADD', KEYS[7], 'MAXLEN', '=', ARGV[4], '*',
      'kind', 'delayed', 'payload', m, 'reason', 'delayed member without a priority prefix')
  end
end
return moved
"#;
