//! The Lua scripts of the Redis layout (see the parent module). Each touches one
//! partition's keys only, so one Redis Cluster slot.

/// Shared by the scripts: the fence. Returns the stored epoch and gen, or nil when
/// the writer is older than either.
pub(super) const FENCE_LUA: &str = r#"
local function fence(meta, epoch, gen)
  local m = redis.call('HMGET', meta, 'epoch', 'gen')
  local e, g = tonumber(m[1]) or 0, tonumber(m[2]) or 0
  if epoch < e or gen < g then return nil end
  return e, g
end
-- True when another claim holding the same epoch fenced the partition: `owner` is
-- the meta hash's `owner` field (`epoch:token`), `mine` the writer's.
local function taken(owner, epoch, e, mine)
  if epoch ~= e or not owner or owner == mine then return false end
  return string.match(owner, '^(%-?%d+):') == tostring(e)
end
-- The replication id of this server's data set, or nil when INFO names none. A
-- promoted replica and a restarted server start a new one, so a live mark written
-- before is void on them; readers compare it too
-- (viewpipe_schema::pending::read::live_mark). Each script asks it first, before
-- it writes anything: a Redis user that may not run INFO fails the script whole.
local data_set = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
-- Stamps the data set on the meta hash (or, where INFO names none, leaves no stamp).
local function stamp(meta)
  if data_set then
    redis.call('HSET', meta, 'replid', data_set)
  else
    redis.call('HDEL', meta, 'replid')
  end
end
-- True when the meta hash's fence or mark was last written on another data set
-- (its `replid`; one without, from an older aggregator, counts as written here).
local function moved(meta)
  local id = redis.call('HGET', meta, 'replid')
  return id and id ~= data_set
end
local function raise(meta, epoch, gen, e, g, live)
  if epoch > e then redis.call('HSET', meta, 'epoch', epoch) end
  if gen > g then redis.call('HSET', meta, 'gen', gen) end
  if live == '1' then
    redis.call('HSET', meta, 'live', epoch)
    stamp(meta)
    redis.call('HDEL', meta, 'recount')
  end
end
"#;

/// KEYS: meta, the generation's hash. ARGV: epoch, gen, prev, last, live, ttl, owner
/// (`epoch:token`), then field and increment pairs. Returns {1, marked} when applied,
/// {-1} when stale (a newer epoch, or another claim of the same one),
/// {-2, applied offset} when `@o` is not `prev` ({-2, -1} when the writer's epoch is
/// newer than the fence: its fence is not in this data set). `live` asks for the live mark; it is
/// set only where the meta hash already knew our epoch (a meta hash lost with the
/// counts must be restored first), and `marked` says whether the mark is ours. With
/// no meta hash at all it answers {-2, -1}: a writer that lost its claim must not be
/// the one to write the partition again after Redis lost its fence.
pub(super) const APPLY_LUA: &str = r#"
local meta, h = KEYS[1], KEYS[2]
local epoch, gen = tonumber(ARGV[1]), tonumber(ARGV[2])
-- No meta hash: Redis lost the partition, fence included. Only a take-over or a
-- restore (whose writer checked its claim in Postgres first) writes it again.
if redis.call('EXISTS', meta) == 0 then return {-2, -1} end
local e, g = fence(meta, epoch, gen)
if not e then return {-1} end
-- Another claim of the same epoch (a Postgres restored to before ours) fenced it.
if taken(redis.call('HGET', meta, 'owner'), epoch, e, ARGV[7]) then return {-1} end
-- A newer writer than the fence: its own fence is not in this data set (a lagging
-- replica was promoted). It restores, which rewrites both generations.
if epoch > e then return {-2, -1} end
local hg = tonumber(redis.call('HGET', h, '@g') or '-1')
if hg > gen then return {-1} end
local applied = -1
if hg == gen then
  applied = tonumber(redis.call('HGET', h, '@o') or '-1')
elseif hg >= 0 then
  redis.call('DEL', h)
end
if applied ~= tonumber(ARGV[3]) then return {-2, applied} end
for i = 8, #ARGV, 2 do redis.call('HINCRBY', h, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', h, '@g', gen, '@o', ARGV[4])
redis.call('EXPIRE', h, ARGV[6])
local live = '0'
-- Only on the data set the fence or mark was written on: on a promoted replica the
-- writer restores (which rewrites every generation) before it vouches again.
if ARGV[5] == '1' and not moved(meta) then live = '1' end
raise(meta, epoch, gen, e, g, live)
if tonumber(redis.call('HGET', meta, 'live')) == epoch and not moved(meta) then
  return {1, 1}
end
return {1, 0}
"#;

/// Rewrites a generation as absolute values, in chunks. KEYS: meta, the generation's
/// hash. ARGV: epoch, gen, first chunk (1/0), last chunk (1/0), last offset, live,
/// ttl, owner (`epoch:token`), then field and value pairs. The first chunk clears the
/// hash and takes the live mark away; the last sets `@o` (and the mark). Returns 1,
/// or -1 when stale (a newer epoch, or another claim of the same one).
pub(super) const RESTORE_LUA: &str = r#"
local meta, h = KEYS[1], KEYS[2]
local epoch, gen = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Only the epoch fences a restore: the owner may rewrite its sealed generation
-- after it started the next one.
local m = redis.call('HMGET', meta, 'epoch', 'gen', 'owner')
local e, g = tonumber(m[1]) or 0, tonumber(m[2]) or 0
if epoch < e or taken(m[3], epoch, e, ARGV[8]) then return -1 end
redis.call('HSET', meta, 'owner', ARGV[8])
if ARGV[3] == '1' then
  redis.call('DEL', h)
  redis.call('HDEL', meta, 'live')
  redis.call('HSET', h, '@g', gen)
end
for i = 9, #ARGV, 2 do redis.call('HSET', h, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', h, ARGV[7])
if ARGV[4] == '1' then
  redis.call('HSET', h, '@o', ARGV[5])
  raise(meta, epoch, gen, e, g, ARGV[6])
else
  raise(meta, epoch, gen, e, g, '0')
end
return 1
"#;

/// A new owner's fence. KEYS: meta, hash of gen's parity, hash of the other parity.
/// ARGV: epoch, gen (the generation Postgres expects next), 1 when the partition was
/// owned before (else 0), owner (`epoch:token`). Folds a generation gen+1 into gen, drops flushed
/// leftovers, raises the epoch. A partition owned before whose meta hash is gone, or
/// was written on another data set (a promoted replica), may have lost what its
/// owners counted: the hash records `recount` until an owner marks the
/// partition live again. Returns {1, applied offset of gen or -1, 1 while `recount`
/// is recorded or 0}, {-1} when a newer owner (or another claim of the same epoch)
/// fenced already, or {-3, stored gen}
/// when Redis is ahead of Postgres by more than one generation.
pub(super) const TAKE_OVER_LUA: &str = r#"
local meta, h, other = KEYS[1], KEYS[2], KEYS[3]
local epoch, gen = tonumber(ARGV[1]), tonumber(ARGV[2])
local m = redis.call('HMGET', meta, 'epoch', 'gen', 'owner')
local e, g = tonumber(m[1]) or 0, tonumber(m[2]) or 0
if epoch < e or taken(m[3], epoch, e, ARGV[4]) then return {-1} end
if g > gen + 1 then return {-3, g} end
-- A meta hash written on another data set (a promoted replica) is as good as lost:
-- its mark is void, and must not come back to life under this fence.
local moved_here = moved(meta)
if ARGV[3] == '1' and (not m[1] or moved_here) then redis.call('HSET', meta, 'recount', 1) end
if moved_here then redis.call('HDEL', meta, 'live') end
local hg = tonumber(redis.call('HGET', h, '@g') or '-1')
local og = tonumber(redis.call('HGET', other, '@g') or '-1')
if hg ~= gen and hg >= 0 then redis.call('DEL', h); hg = -1 end
if og == gen + 1 then
  if hg == gen then
    local fields = redis.call('HGETALL', other)
    for i = 1, #fields, 2 do
      local f = fields[i]
      if f == '@o' then redis.call('HSET', h, '@o', fields[i + 1])
      elseif f ~= '@g' then redis.call('HINCRBY', h, f, fields[i + 1]) end
    end
  end
  redis.call('DEL', other)
elseif og >= 0 then
  redis.call('DEL', other)
end
redis.call('HSET', meta, 'epoch', epoch, 'gen', gen, 'owner', ARGV[4])
stamp(meta)
local applied = -1
if redis.call('HGET', h, '@g') then applied = tonumber(redis.call('HGET', h, '@o') or '-1') end
local recount = 0
if redis.call('HEXISTS', meta, 'recount') == 1 then recount = 1 end
return {1, applied, recount}
"#;
