//! Pending counts in Redis.
//!
//! One hash per content key, `{prefix}:c:{<key>}` (the braces make it a Redis Cluster
//! hash tag, so a key's hash and its de-duplication keys share a slot), with fields:
//! - `t:<partition>:<gen>`: views of the key consumed from that partition in that
//!   flush generation;
//! - `d:<partition>:<gen>:<YYYY-MM-DD>`: the same split by UTC day;
//! - `o:<partition>`: the highest offset of that partition applied to this key;
//! - `g:<partition>`: the newest generation written for that partition.
//!
//! Applying a batch is idempotent: a message at or below `o:<partition>` was applied
//! before (by this aggregator or a crashed predecessor) and adds nothing, whatever
//! the batch boundaries were. Fields of generations below the writer's own are already
//! in Postgres; the script drops them as it goes, and readers ignore them anyway.
//!
//! De-duplication: `{prefix}:e:{<key>}:<eventId>` holds `<partition>:<offset>` of the
//! first message seen with that id, for 24 h. A later message with the same id is a
//! duplicate; a replay of the first message finds its own tag and still counts.

use chrono::NaiveDate;
use redis::aio::ConnectionManager;

use viewpipe_schema::ContentKey;

/// How long an eventId is remembered (contract guarantee 3).
pub const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;
/// A key's hash outlives its last write by this long; all its pending fields are
/// flushed within seconds, so expiry only ever drops data Postgres already has.
pub const HASH_TTL_SECS: u64 = 7 * 24 * 60 * 60;

const APPLY_LUA: &str = r#"
local h = KEYS[1]
local p = ARGV[1]
local gen = tonumber(ARGV[2])
local applied = tonumber(redis.call('HGET', h, 'o:' .. p) or '-1')
local last_gen = tonumber(redis.call('HGET', h, 'g:' .. p) or '0')
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
  redis.call('HSET', h, 'g:' .. p, ARGV[2])
end
local out = {}
local added = 0
local days = {}
local top, top_text = applied, nil
local ki = 2
local n = (#ARGV - 4) / 3
for i = 0, n - 1 do
  local off_text = ARGV[5 + 3 * i]
  local off = tonumber(off_text)
  local counted = 1
  if ARGV[7 + 3 * i] == '1' then
    local ek = KEYS[ki]
    ki = ki + 1
    local tag = p .. ':' .. off_text
    local prev = redis.call('GET', ek)
    if not prev then
      redis.call('SET', ek, tag, 'EX', ARGV[3])
    elseif prev ~= tag then
      counted = 0
    end
  end
  if counted == 1 and off > applied then
    added = added + 1
    local day = ARGV[6 + 3 * i]
    days[day] = (days[day] or 0) + 1
  end
  if off > top then
    top = off
    top_text = off_text
  end
  out[i + 1] = counted
end
if added > 0 then
  redis.call('HINCRBY', h, 't:' .. p .. ':' .. ARGV[2], added)
  for day, c in pairs(days) do
    redis.call('HINCRBY', h, 'd:' .. p .. ':' .. ARGV[2] .. ':' .. day, c)
  end
end
if top_text then redis.call('HSET', h, 'o:' .. p, top_text) end
redis.call('EXPIRE', h, ARGV[4])
return out
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
}

/// The Redis side of the counts.
#[derive(Clone)]
pub struct PendingStore {
    conn: ConnectionManager,
    layout: Layout,
    script: redis::Script,
}

impl PendingStore {
    pub fn new(conn: ConnectionManager, layout: Layout) -> Self {
        Self {
            conn,
            layout,
            script: redis::Script::new(APPLY_LUA),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Applies one batch of one partition in a single pipeline (one script call per
    /// key). Returns, per key and per message, whether the message counts (`true`) or
    /// is a duplicate of an earlier eventId (`false`).
    pub async fn apply(
        &self,
        partition: i32,
        gen: i64,
        batch: &[KeyMessages],
    ) -> redis::RedisResult<Vec<Vec<bool>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.apply_pipeline(partition, gen, batch);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Vec<Vec<i64>>> = pipe.query_async(&mut conn).await;
        let flags = match result {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and lost its script cache. The script is idempotent,
                // so re-sending the whole pipeline is safe.
                self.script.prepare_invoke().load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            other => other?,
        };
        Ok(flags
            .into_iter()
            .map(|key_flags| key_flags.into_iter().map(|f| f == 1).collect())
            .collect())
    }

    fn apply_pipeline(&self, partition: i32, gen: i64, batch: &[KeyMessages]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let mut day_text = String::with_capacity(10);
        for km in batch {
            let key = km.key.as_str();
            let ids = km.messages.iter().filter(|m| m.event_id.is_some()).count();
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1 + ids)
                .arg(self.layout.counts(key));
            for id in km.messages.iter().filter_map(|m| m.event_id.as_deref()) {
                cmd.arg(self.layout.dedupe(key, id));
            }
            cmd.arg(partition)
                .arg(gen)
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
