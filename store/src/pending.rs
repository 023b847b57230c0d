//! Pending counts in Redis.
//!
//! One hash per content key, `{prefix}:c:{<key>}` (the braces make it a Redis Cluster
//! hash tag, so a key's hash and its de-duplication keys share a slot), with fields:
//! - `t:<partition>:<gen>`: views of the key consumed from that partition in that
//!   flush generation;
//! - `d:<partition>:<gen>:<YYYY-MM-DD>`: the same split by UTC day;
//! - `o:<partition>`: the highest offset of that partition applied to this key in
//!   the current generation;
//! - `g:<partition>`: the current (newest) generation of that partition;
//! - `e:<partition>`: the newest owner epoch that wrote that partition.
//!
//! Applying a batch is idempotent: a message at or below `o:<partition>` was applied
//! in this generation before (by this aggregator or a crashed predecessor) and adds
//! nothing, whatever the batch boundaries were. Fields of generations below the
//! writer's own are already in Postgres; the script drops them as it goes, and
//! readers ignore them anyway.
//!
//! Fencing: a writer with an older epoch or generation than the hash has seen for the
//! partition is refused (`Applied::Stale`), so an aggregator that lost a partition
//! cannot move `o:` past offsets its successor still has to count.
//!
//! De-duplication: `{prefix}:e:{<key>}:<eventId>` holds `<partition>:<offset>` of the
//! first message seen with that id, for 24 h. A later message with the same id is a
//! duplicate; a replay of the first message finds its own tag and still counts.
//!
//! Loss: `{prefix}:live` maps each partition to the epoch of the owner that vouches
//! for its pending counts being complete in Redis. Losing Redis' data loses the mark;
//! readers wait for it and the owner restores its counts from memory before setting
//! it again (`PendingStore::restore`).

use std::collections::HashMap;

use chrono::NaiveDate;
use redis::aio::ConnectionManager;

use viewpipe_schema::ContentKey;

use crate::postgres::KeyDelta;

/// How long an eventId is remembered (contract guarantee 3).
pub const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;
/// A key's hash outlives its last write by this long; all its pending fields are
/// flushed within seconds, so expiry only ever drops data Postgres already has.
pub const HASH_TTL_SECS: u64 = 7 * 24 * 60 * 60;

/// Shared by both scripts: refuses a writer older than the hash's newest for the
/// partition (returns false), and on a newer generation drops the partition's older
/// fields, which Postgres already holds.
const PRELUDE_LUA: &str = r#"
local function admit(h, p, gen, epoch)
  local stored_epoch = tonumber(redis.call('HGET', h, 'e:' .. p) or '0')
  local last_gen = tonumber(redis.call('HGET', h, 'g:' .. p) or '0')
  if epoch < stored_epoch or gen < last_gen then return false end
  if epoch > stored_epoch then redis.call('HSET', h, 'e:' .. p, epoch) end
  if last_gen < gen then
    local prefix_t = 't:' .. p .. ':'
    local prefix_d = 'd:' .. p .. ':'
    for _, f in ipairs(redis.call('HKEYS', h)) do
      local head = string.sub(f, 1, #prefix_t)
      if head == prefix_t or head == prefix_d then
        local g = tonumber(string.match(string.sub(f, #prefix_t + 1), '^(%d+)'))
        if g and g < gen then redis.call('HDEL', h, f) end
      end
    end
    redis.call('HDEL', h, 'o:' .. p)
    redis.call('HSET', h, 'g:' .. p, gen)
  end
  return true
end
"#;

/// KEYS: the count hash, then one de-duplication key per message with an eventId.
/// ARGV: partition, gen, epoch, dedupe TTL, hash TTL, then per message its offset,
/// day and whether it has an eventId. Returns a flag per message, or `{-1}` when the
/// writer is stale.
const APPLY_LUA: &str = r#"
local h = KEYS[1]
local p = ARGV[1]
local gen_text = ARGV[2]
if not admit(h, p, tonumber(gen_text), tonumber(ARGV[3])) then return {-1} end
local applied = tonumber(redis.call('HGET', h, 'o:' .. p) or '-1')
local out = {}
local added = 0
local days = {}
local top, top_text = applied, nil
local ki = 2
local n = (#ARGV - 5) / 3
for i = 0, n - 1 do
  local off_text = ARGV[6 + 3 * i]
  local off = tonumber(off_text)
  local counted = 1
  if ARGV[8 + 3 * i] == '1' then
    local ek = KEYS[ki]
    ki = ki + 1
    local tag = p .. ':' .. off_text
    local prev = redis.call('GET', ek)
    if not prev then
      redis.call('SET', ek, tag, 'EX', ARGV[4])
    elseif prev ~= tag then
      counted = 0
    end
  end
  if counted == 1 and off > applied then
    added = added + 1
    local day = ARGV[7 + 3 * i]
    days[day] = (days[day] or 0) + 1
  end
  if off > top then
    top = off
    top_text = off_text
  end
  out[i + 1] = counted
end
if added > 0 then
  redis.call('HINCRBY', h, 't:' .. p .. ':' .. gen_text, added)
  for day, c in pairs(days) do
    redis.call('HINCRBY', h, 'd:' .. p .. ':' .. gen_text .. ':' .. day, c)
  end
end
if top_text then redis.call('HSET', h, 'o:' .. p, top_text) end
redis.call('EXPIRE', h, ARGV[5])
return out
"#;

/// Rewrites one key's pending counts of a partition as absolute values, after Redis
/// lost them. KEYS: the count hash. ARGV: partition, gen, epoch, last applied
/// offset, hash TTL, total, then day and count pairs. Returns 1, or -1 when stale.
const RESTORE_LUA: &str = r#"
local h = KEYS[1]
local p = ARGV[1]
local gen_text = ARGV[2]
if not admit(h, p, tonumber(gen_text), tonumber(ARGV[3])) then return -1 end
redis.call('HSET', h, 'o:' .. p, ARGV[4], 't:' .. p .. ':' .. gen_text, ARGV[6])
for i = 7, #ARGV - 1, 2 do
  redis.call('HSET', h, 'd:' .. p .. ':' .. gen_text .. ':' .. ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', h, ARGV[5])
return 1
"#;

/// One consumed message of a key, as the apply script needs it.
#[derive(Clone, Debug)]
pub struct Message {
    pub offset: i64,
    pub day: NaiveDate,
    pub event_id: Option<String>,
}

/// The messages of one key in one batch of one partition, in offset order.
#[derive(Clone, Debug)]
pub struct KeyMessages {
    pub key: ContentKey,
    pub messages: Vec<Message>,
}

/// The Redis key layout of one deployment.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix` must not contain `{` or `}`: the key's own braces are the hash tag.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.contains(['{', '}']) {
            return Err(format!("REDIS_PREFIX {prefix:?} must not contain braces"));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn counts(&self, key: &str) -> String {
        format!("{}:c:{{{}}}", self.prefix, key)
    }

    pub fn dedupe(&self, key: &str, event_id: &str) -> String {
        format!("{}:e:{{{}}}:{}", self.prefix, key, event_id)
    }

    /// Hash of partition -> epoch: partitions whose pending counts Redis holds
    /// completely. Redis losing its data loses this hash too, which is how readers
    /// and aggregators notice (see `docs/exactly-once.md`).
    pub fn live(&self) -> String {
        format!("{}:live", self.prefix)
    }
}

/// What applying a batch of one partition found.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Per key and per message: counts (`true`) or repeats an earlier eventId.
    Flags(Vec<Vec<bool>>),
    /// A newer owner (epoch) or a later generation has written this partition: the
    /// writer lost it and must stop counting it.
    Stale,
}

/// The Redis side of the counts.
#[derive(Clone)]
pub struct PendingStore {
    conn: ConnectionManager,
    layout: Layout,
    apply_script: redis::Script,
    restore_script: redis::Script,
}

impl PendingStore {
    pub fn new(conn: ConnectionManager, layout: Layout) -> Self {
        Self {
            conn,
            layout,
            apply_script: redis::Script::new(&format!("{PRELUDE_LUA}{APPLY_LUA}")),
            restore_script: redis::Script::new(&format!("{PRELUDE_LUA}{RESTORE_LUA}")),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Applies one batch of one partition in a single pipeline (one script call per
    /// key).
    pub async fn apply(
        &self,
        partition: i32,
        gen: i64,
        epoch: i64,
        batch: &[KeyMessages],
    ) -> redis::RedisResult<Applied> {
        if batch.is_empty() {
            return Ok(Applied::Flags(Vec::new()));
        }
        let pipe = self.apply_pipeline(partition, gen, epoch, batch);
        let flags: Vec<Vec<i64>> = self.query_scripts(&pipe).await?;
        if flags.iter().any(|f| f.first() == Some(&-1)) {
            return Ok(Applied::Stale);
        }
        Ok(Applied::Flags(
            flags
                .into_iter()
                .map(|key_flags| key_flags.into_iter().map(|f| f == 1).collect())
                .collect(),
        ))
    }

    /// Runs a pipeline of script calls. Both scripts are idempotent, so after Redis
    /// lost its script cache (a restart) the whole pipeline is simply sent again.
    async fn query_scripts<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        match pipe.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.apply_script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await?;
                self.restore_script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await?;
                pipe.query_async(&mut conn).await
            }
            other => other,
        }
    }

    fn apply_pipeline(
        &self,
        partition: i32,
        gen: i64,
        epoch: i64,
        batch: &[KeyMessages],
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let mut day_text = String::with_capacity(10);
        for km in batch {
            let key = km.key.as_str();
            let ids = km.messages.iter().filter(|m| m.event_id.is_some()).count();
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.apply_script.get_hash())
                .arg(1 + ids)
                .arg(self.layout.counts(key));
            for id in km.messages.iter().filter_map(|m| m.event_id.as_deref()) {
                cmd.arg(self.layout.dedupe(key, id));
            }
            cmd.arg(partition)
                .arg(gen)
                .arg(epoch)
                .arg(DEDUPE_TTL_SECS)
                .arg(HASH_TTL_SECS);
            for m in &km.messages {
                day_text.clear();
                use std::fmt::Write;
                let _ = write!(day_text, "{}", m.day.format("%Y-%m-%d"));
                cmd.arg(m.offset)
                    .arg(day_text.as_str())
                    .arg(if m.event_id.is_some() { "1" } else { "0" });
            }
        }
        pipe
    }

    /// Rewrites a partition's in-memory pending counts into Redis as absolute values
    /// (after Redis lost them), then marks the partition live under `epoch`.
    /// `last_offset` is the partition's last consumed offset. Returns `Applied::Stale`
    /// when a newer owner has written one of the keys.
    pub async fn restore(
        &self,
        partition: i32,
        gen: i64,
        epoch: i64,
        last_offset: i64,
        pending: &HashMap<String, KeyDelta>,
    ) -> redis::RedisResult<Applied> {
        if !pending.is_empty() {
            let mut pipe = redis::pipe();
            for (key, delta) in pending {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.restore_script.get_hash())
                    .arg(1)
                    .arg(self.layout.counts(key))
                    .arg(partition)
                    .arg(gen)
                    .arg(epoch)
                    .arg(last_offset)
                    .arg(HASH_TTL_SECS)
                    .arg(delta.total);
                for (day, n) in &delta.days {
                    cmd.arg(day.format("%Y-%m-%d").to_string()).arg(*n);
                }
            }
            let answers: Vec<i64> = self.query_scripts(&pipe).await?;
            if answers.contains(&-1) {
                return Ok(Applied::Stale);
            }
        }
        let mut conn = self.conn.clone();
        let () = redis::cmd("HSET")
            .arg(self.layout.live())
            .arg(partition)
            .arg(epoch)
            .query_async(&mut conn)
            .await?;
        Ok(Applied::Flags(Vec::new()))
    }

    /// The epoch each partition was last marked live under (`None`: not marked, so
    /// Redis may have lost its pending counts).
    pub async fn live_epochs(&self, partitions: &[i32]) -> redis::RedisResult<Vec<Option<i64>>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        redis::cmd("HMGET")
            .arg(self.layout.live())
            .arg(partitions)
            .query_async(&mut conn)
            .await
    }
}

/// Pending counts of one key as read from its hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingFields {
    /// `(partition, gen, count)` of every `t:` field.
    pub totals: Vec<(i32, i64, i64)>,
    /// `(partition, gen, day, count)` of every `d:` field.
    pub days: Vec<(i32, i64, NaiveDate, i64)>,
}

impl PendingFields {
    /// Parses an `HGETALL` answer; fields of an unknown shape are ignored.
    pub fn parse(fields: Vec<(String, i64)>) -> Self {
        let mut out = Self::default();
        for (name, value) in fields {
            let mut parts = name.splitn(4, ':');
            let kind = parts.next();
            let partition = parts.next().and_then(|p| p.parse().ok());
            let gen = parts.next().and_then(|g| g.parse().ok());
            match (kind, partition, gen, parts.next()) {
                (Some("t"), Some(p), Some(g), None) => out.totals.push((p, g, value)),
                (Some("d"), Some(p), Some(g), Some(day)) => {
                    if let Ok(day) = NaiveDate::parse_from_str(day, "%Y-%m-%d") {
                        out.days.push((p, g, day, value));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_uses_the_key_as_hash_tag() {
        let layout = Layout::new("vp").expect("valid prefix");
        assert_eq!(layout.counts("resource:a"), "vp:c:{resource:a}");
        assert_eq!(
            layout.dedupe("resource:a", "e{1}"),
            "vp:e:{resource:a}:e{1}"
        );
        assert!(Layout::new("v{p").is_err());
    }

    #[test]
    fn parses_pending_fields() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).expect("date");
        let parsed = PendingFields::parse(vec![
            ("t:3:7".into(), 5),
            ("d:3:7:2026-11-21".into(), 5),
            ("o:3".into(), 99),
            ("g:3".into(), 7),
            ("t:x:1".into(), 1),
        ]);
        assert_eq!(parsed.totals, vec![(3, 7, 5)]);
        assert_eq!(parsed.days, vec![(3, 7, day, 5)]);
    }
}
