//! Pending counts in Redis: what the aggregators have consumed and Postgres does not
//! hold yet, kept per partition and flush generation.
//!
//! # Layout
//! Every key of partition `p` carries the hash tag `{<scope>.<p>}`, so one partition's
//! keys share a Redis Cluster slot and each script below touches one slot. `<scope>`
//! is a short hash of the consumer group and topic, so two deployments sharing a prefix
//! cannot meet.
//! - `{prefix}:{s.p}:m`, the partition's meta hash: `epoch`, the newest owner epoch
//!   that wrote it; `gen`, the newest generation written; `live`, the epoch of the owner
//!   that vouches Redis holds all of the partition's pending counts (see "Loss").
//! - `{prefix}:{s.p}:g0` and `:g1`: the counts of the partition's even and odd
//!   generations. At most two generations of a partition are unflushed at once (one
//!   being flushed, the next being written) and they differ in parity, so two hashes
//!   suffice and a reader can name every key it reads. Fields: `@g` the generation,
//!   `@o` the highest offset applied, `t:<key>` views of the key, `d:<key>:<day>` views
//!   of the key on that UTC day.
//!
//! Client-chosen `eventId`s are remembered in Postgres, not here (see
//! [`crate::event_ids`]). A pending key therefore costs two hash fields per generation
//! (its total and one per day), whatever its traffic.
//!
//! # Applying a batch
//! One script call per partition and batch adds the batch's pre-aggregated counts. It
//! is a compare-and-set on `@o`: the writer says which offset it believes Redis holds
//! (`prev`) and the batch's last offset; the script adds only if `@o` equals `prev`,
//! then sets `@o` to the last offset. Any other `@o` is answered, never guessed at:
//! at or past the batch's end the batch is in already (a retry after a lost reply),
//! and below it Redis lost data or holds part of the batch (the writer then rewrites
//! the generation from memory, [`PendingStore::restore`]). So a batch is never added
//! twice, whatever the batch boundaries, retries or crashes.
//!
//! # Fencing
//! A writer with an older epoch or generation than the meta hash has seen is refused
//! ([`Applied::Stale`]). A new owner fences first ([`PendingStore::take_over`]): it
//! raises `epoch`, folds a generation its predecessor had started beyond the one
//! Postgres expects next into that one (readers see the same sum either way), and
//! learns how far Redis got, which is how far it must re-count before it may flush.
//!
//! # Loss
//! Losing Redis' data loses the `live` marks with the counts. Readers wait for a mark
//! on every partition Postgres knows of; the owner notices the loss on its next write
//! or check, rewrites the counts from memory and marks the partition live again.

use std::fmt::Write;
use std::sync::Arc;

use chrono::NaiveDate;

use crate::counts::Counts;
use crate::redis_conn::RedisConn;

/// How long a client-chosen eventId is remembered (contract guarantee 3).
pub const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;
/// A generation hash outlives its last write by this long. Generations are flushed
/// and deleted within seconds; expiry only ever drops leftovers Postgres already has.
pub const HASH_TTL_SECS: u64 = 7 * 24 * 60 * 60;
/// Most field/value pairs one restore script call writes, so that a restore of a
/// large generation does not hold Redis for long.
const RESTORE_CHUNK: usize = 5000;

mod scripts;
use scripts::{APPLY_LUA, FENCE_LUA, RESTORE_LUA, TAKE_OVER_LUA};

/// A `REDIS_PREFIX` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("REDIS_PREFIX {prefix:?} must not contain braces (they mark Redis Cluster hash tags)")]
pub struct BadPrefix {
    pub prefix: String,
}

/// The Redis key layout of one deployment and scope.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
    scope: String,
}

impl Layout {
    /// `prefix` must not contain `{` or `}`: the braces mark the hash tags.
    /// `group` and `topic` are the consumer group and topic the counts come from.
    pub fn new(prefix: &str, group: &str, topic: &str) -> Result<Self, BadPrefix> {
        if prefix.contains(['{', '}']) {
            return Err(BadPrefix {
                prefix: prefix.to_owned(),
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            scope: format!(
                "{:08x}",
                fnv1a(&[group.as_bytes(), b"\n", topic.as_bytes()]) as u32
            ),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A `SCAN` pattern matching every key of this deployment's pending state.
    pub fn pattern(&self) -> String {
        let mut escaped = String::with_capacity(self.prefix.len());
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        format!("{escaped}:{{{}.*", self.scope)
    }

    pub fn meta(&self, partition: i32) -> String {
        format!("{}:{{{}.{partition}}}:m", self.prefix, self.scope)
    }

    /// The hash holding generation `gen` of `partition` (one per parity).
    pub fn gen(&self, partition: i32, gen: i64) -> String {
        format!(
            "{}:{{{}.{partition}}}:g{}",
            self.prefix,
            self.scope,
            gen.rem_euclid(2)
        )
    }
}

/// 64-bit FNV-1a: a stable, dependency-free hash for naming.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The field of a key's total in a generation hash: `t:<key>`.
pub fn total_field(key: &str) -> String {
    let mut name = String::with_capacity(2 + key.len());
    push_total_field(&mut name, key);
    name
}

/// The field of a key's views on `day` in a generation hash: `d:<key>:<YYYY-MM-DD>`.
pub fn day_field(key: &str, day: NaiveDate) -> String {
    let mut name = String::with_capacity(14 + key.len());
    push_day_field(&mut name, key, day);
    name
}

fn push_total_field(name: &mut String, key: &str) {
    name.push_str("t:");
    name.push_str(key);
}

fn push_day_field(name: &mut String, key: &str, day: NaiveDate) {
    let _ = write!(name, "d:{key}:{day}");
}

/// Calls `f` with each generation-hash field `counts` adds to and its value: each
/// key's total ([`total_field`]) and each of its days ([`day_field`]). One buffer is
/// reused for the names.
pub fn for_each_field(counts: &Counts, mut f: impl FnMut(&str, i64)) {
    let mut name = String::with_capacity(64);
    for (key, key_counts) in counts.iter() {
        name.clear();
        push_total_field(&mut name, key);
        f(&name, key_counts.total());
        for (day, n) in key_counts.days() {
            name.clear();
            push_day_field(&mut name, key, *day);
            f(&name, *n);
        }
    }
}

/// The fields of [`for_each_field`], collected: what [`PendingStore::restore`] writes.
pub fn fields(counts: &Counts) -> Vec<(String, i64)> {
    let mut out = Vec::with_capacity(counts.len() * 2);
    for_each_field(counts, |name, n| out.push((name.to_owned(), n)));
    out
}

/// One partition's batch, pre-aggregated.
#[derive(Clone, Debug)]
pub struct PartitionBatch {
    pub partition: i32,
    pub epoch: i64,
    pub gen: i64,
    /// The offset the writer believes Redis holds for this generation (-1: none).
    pub prev: i64,
    /// The batch's last offset.
    pub last: i64,
    /// Mark the partition live (the writer is caught up and vouches for it).
    pub live: bool,
    /// What the batch adds.
    pub counts: Arc<Counts>,
}

/// What applying one partition's batch found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Added; Redis now holds the generation up to the batch's last offset. `live`:
    /// the partition is marked live under the writer's epoch.
    Added { live: bool },
    /// Redis holds the generation up to this offset, which is not `prev`: at or past
    /// the batch's end the batch is in already; below it the writer must restore.
    At(i64),
    /// A newer owner or a later generation has written this partition: the writer
    /// lost it and must stop counting it.
    Stale,
}

/// What a new owner learns when it fences a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// Redis holds the generation up to this offset (-1: nothing).
    Applied(i64),
    /// A newer owner fenced the partition already.
    Stale,
    /// Redis has written a generation more than one past what Postgres expects:
    /// Postgres went back in time (see `docs/exactly-once.md`).
    Ahead(i64),
}

/// The Redis side of the counts.
#[derive(Clone)]
pub struct PendingStore {
    conn: RedisConn,
    layout: Layout,
    apply_script: redis::Script,
    restore_script: redis::Script,
    take_over_script: redis::Script,
}

impl PendingStore {
    pub fn new(conn: RedisConn, layout: Layout) -> Self {
        Self {
            conn,
            layout,
            apply_script: redis::Script::new(&format!("{FENCE_LUA}{APPLY_LUA}")),
            restore_script: redis::Script::new(&format!("{FENCE_LUA}{RESTORE_LUA}")),
            take_over_script: redis::Script::new(TAKE_OVER_LUA),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Applies each partition's batch (one script call each, one round trip).
    pub async fn apply(&self, batches: &[PartitionBatch]) -> redis::RedisResult<Vec<Applied>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let answers: Vec<Vec<i64>> = self
            .query_scripts(
                batches,
                false,
                |b| self.layout.meta(b.partition),
                |pipe, b| {
                    let cmd = pipe
                        .cmd("EVALSHA")
                        .arg(self.apply_script.get_hash())
                        .arg(2)
                        .arg(self.layout.meta(b.partition))
                        .arg(self.layout.gen(b.partition, b.gen))
                        .arg(b.epoch)
                        .arg(b.gen)
                        .arg(b.prev)
                        .arg(b.last)
                        .arg(if b.live { "1" } else { "0" })
                        .arg(HASH_TTL_SECS);
                    for_each_field(&b.counts, |field, n| {
                        cmd.arg(field).arg(n);
                    });
                },
            )
            .await?;
        Ok(answers
            .into_iter()
            .map(|a| match a.as_slice() {
                [1, marked, ..] => Applied::Added { live: *marked == 1 },
                [-2, at, ..] => Applied::At(*at),
                _ => Applied::Stale,
            })
            .collect())
    }

    /// Fences `partition` for a new owner with `epoch`, which writes generation `gen`.
    pub async fn take_over(
        &self,
        partition: i32,
        epoch: i64,
        gen: i64,
    ) -> redis::RedisResult<TakeOver> {
        let (answer,): (Vec<i64>,) = self
            .query_scripts(
                &[partition],
                false,
                |p| self.layout.meta(*p),
                |pipe, p| {
                    pipe.cmd("EVALSHA")
                        .arg(self.take_over_script.get_hash())
                        .arg(3)
                        .arg(self.layout.meta(*p))
                        .arg(self.layout.gen(*p, gen))
                        .arg(self.layout.gen(*p, gen + 1))
                        .arg(epoch)
                        .arg(gen);
                },
            )
            .await?;
        Ok(match answer.as_slice() {
            [1, applied, ..] => TakeOver::Applied(*applied),
            [-3, ahead, ..] => TakeOver::Ahead(*ahead),
            _ => TakeOver::Stale,
        })
    }

    /// Rewrites generation `gen` of `partition` as exactly `fields` (absolute values),
    /// applied up to `last`, and marks the partition live if `live`. The chunks run
    /// as one transaction (`MULTI`; the partition's keys share one slot), so nothing
    /// (a wipe, a failover's flush) can fall between the first chunk, which empties
    /// the hash, and the last, which marks the partition live over it.
    pub async fn restore(
        &self,
        partition: i32,
        epoch: i64,
        gen: i64,
        last: i64,
        live: bool,
        fields: &[(String, i64)],
    ) -> redis::RedisResult<Applied> {
        let chunks: Vec<&[(String, i64)]> = if fields.is_empty() {
            vec![&[]]
        } else {
            fields.chunks(RESTORE_CHUNK).collect()
        };
        let n = chunks.len();
        let answers: Vec<i64> = self
            .query_scripts(
                &[partition],
                true,
                |p| self.layout.meta(*p),
                |pipe, _| {
                    for (i, chunk) in chunks.iter().enumerate() {
                        self.restore_chunk(pipe, partition, epoch, gen, (i, n), last, live, chunk);
                    }
                },
            )
            .await?;
        Ok(if answers.contains(&-1) {
            Applied::Stale
        } else {
            Applied::Added { live }
        })
    }

    /// Chunk `i` of `n` of a restore (see [`PendingStore::restore`]).
    #[allow(clippy::too_many_arguments)]
    fn restore_chunk(
        &self,
        pipe: &mut redis::Pipeline,
        partition: i32,
        epoch: i64,
        gen: i64,
        (i, n): (usize, usize),
        last: i64,
        live: bool,
        chunk: &[(String, i64)],
    ) {
        {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.restore_script.get_hash())
                .arg(2)
                .arg(self.layout.meta(partition))
                .arg(self.layout.gen(partition, gen))
                .arg(epoch)
                .arg(gen)
                .arg(if i == 0 { "1" } else { "0" })
                .arg(if i + 1 == n { "1" } else { "0" })
                .arg(last)
                .arg(if live { "1" } else { "0" })
                .arg(HASH_TTL_SECS);
            for (field, value) in chunk {
                cmd.arg(field.as_str()).arg(*value);
            }
        }
    }

    /// Deletes a flushed generation's hash (if it still holds that generation).
    pub async fn drop_generation(&self, partition: i32, gen: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(
            "if redis.call('HGET', KEYS[1], '@g') == ARGV[1] then redis.call('UNLINK', KEYS[1]) end",
        );
        script
            .key(self.layout.gen(partition, gen))
            .arg(gen)
            .invoke_async(&mut conn)
            .await
    }

    /// For each `(partition, generation)`: the epoch the partition is marked live
    /// under (`None`: not marked, so Redis may have lost its pending counts), and the
    /// offset Redis holds that generation applied up to (`None`: no such hash).
    pub async fn marks(
        &self,
        partitions: &[(i32, i64)],
    ) -> redis::RedisResult<Vec<(Option<i64>, Option<i64>)>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let raw = self
            .conn
            .per_partition(
                partitions,
                true,
                |(p, _)| self.layout.meta(*p),
                |pipe, (p, gen)| {
                    pipe.cmd("HGET").arg(self.layout.meta(*p)).arg("live");
                    pipe.cmd("HMGET")
                        .arg(self.layout.gen(*p, *gen))
                        .arg("@g")
                        .arg("@o");
                },
            )
            .await?;
        let mut it = raw.into_iter();
        let mut out = Vec::with_capacity(partitions.len());
        for (_, gen) in partitions {
            let live: Option<i64> =
                redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
            let hash: Vec<Option<i64>> =
                redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
            let applied = match hash.as_slice() {
                [Some(g), Some(o)] if g == gen => Some(*o),
                _ => None,
            };
            out.push((live, applied));
        }
        Ok(out)
    }

    /// Every key of this deployment's pending state.
    pub async fn keys(&self) -> redis::RedisResult<Vec<String>> {
        self.conn.scan(&self.layout.pattern()).await
    }

    /// Deletes `keys` (as [`PendingStore::keys`] listed them); returns how many
    /// existed.
    pub async fn delete(&self, keys: &[String]) -> redis::RedisResult<u64> {
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            let counts = self
                .conn
                .per_partition(chunk, false, String::clone, |pipe, key| {
                    pipe.cmd("DEL").arg(key);
                })
                .await?;
            deleted += redis::from_redis_value::<Vec<u64>>(redis::Value::Array(counts))?
                .iter()
                .sum::<u64>();
        }
        Ok(deleted)
    }

    /// Runs script calls, the ones `build` adds for each of `items` (see
    /// [`RedisConn::per_partition`]). The scripts are safe to run twice (the apply is
    /// a compare-and-set, the others are idempotent), so after Redis lost its script
    /// cache (a restart) they are loaded and everything is sent again.
    async fn query_scripts<I, T: redis::FromRedisValue>(
        &self,
        items: &[I],
        atomic: bool,
        slot_key: impl Fn(&I) -> String,
        build: impl Fn(&mut redis::Pipeline, &I),
    ) -> redis::RedisResult<T> {
        let answers = match self
            .conn
            .per_partition(items, atomic, &slot_key, &build)
            .await
        {
            // Inside a transaction the missing script aborts the EXEC.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    || e.to_string().contains("NOSCRIPT") =>
            {
                let mut conn = self.conn.clone();
                for script in [
                    &self.apply_script,
                    &self.restore_script,
                    &self.take_over_script,
                ] {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                self.conn
                    .per_partition(items, atomic, &slot_key, &build)
                    .await?
            }
            other => other?,
        };
        Ok(redis::from_redis_value(redis::Value::Array(answers))?)
    }
}

/// What one partition's generation hashes hold for the fields a read asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    /// The epoch the partition is marked live under; `None` when not marked.
    pub live: Option<i64>,
    /// `(generation, the asked fields' values, 0 when absent)` of each generation
    /// hash that holds one.
    pub gens: Vec<(i64, Vec<i64>)>,
    /// `(generation, the offset it is applied up to)` of each generation hash.
    pub applied: Vec<(i64, i64)>,
}

impl PendingStore {
    /// Reads what every listed partition holds for `key`: its total, then its count
    /// on each of `days`.
    pub async fn read(
        &self,
        key: &str,
        days: &[NaiveDate],
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<PartitionView>> {
        let mut fields = vec![total_field(key)];
        fields.extend(days.iter().map(|d| day_field(key, *d)));
        self.read_fields(&fields, partitions).await
    }

    /// Reads what every listed partition holds for the totals of `keys`.
    pub async fn read_totals(
        &self,
        keys: &[&str],
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<PartitionView>> {
        let fields: Vec<String> = keys.iter().map(|k| total_field(k)).collect();
        self.read_fields(&fields, partitions).await
    }

    /// Reads every listed partition's live mark and `fields` of both its generation
    /// hashes, atomically per partition.
    async fn read_fields(
        &self,
        fields: &[String],
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<PartitionView>> {
        // Atomic per partition: a partition's generations rotate together with its
        // live mark; partitions are independent of each other (see `read`).
        let raw = self
            .conn
            .per_partition(
                partitions,
                true,
                |p| self.layout.meta(*p),
                |pipe, p| {
                    pipe.cmd("HGET").arg(self.layout.meta(*p)).arg("live");
                    for parity in 0..2 {
                        pipe.cmd("HMGET")
                            .arg(self.layout.gen(*p, parity))
                            .arg("@g")
                            .arg("@o")
                            .arg(fields);
                    }
                },
            )
            .await?;
        let mut it = raw.into_iter();
        let mut next = || it.next().unwrap_or(redis::Value::Nil);
        let mut out = Vec::with_capacity(partitions.len());
        for p in partitions {
            let mut view = PartitionView {
                partition: *p,
                live: redis::from_redis_value(next())?,
                gens: Vec::new(),
                applied: Vec::new(),
            };
            for _ in 0..2 {
                let values: Vec<Option<i64>> = redis::from_redis_value(next())?;
                if let [Some(gen), applied, rest @ ..] = values.as_slice() {
                    view.applied.push((*gen, applied.unwrap_or(-1)));
                    view.gens
                        .push((*gen, rest.iter().map(|v| v.unwrap_or(0)).collect()));
                }
            }
            out.push(view);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitions_keys_share_one_hash_tag_and_the_scope_separates_deployments() {
        let layout = Layout::new("vp", "group", "views").expect("valid prefix");
        let meta = layout.meta(3);
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_owned();
        assert_eq!(tag(&meta), tag(&layout.gen(3, 7)));
        assert_eq!(tag(&meta), tag(&layout.gen(3, 8)));
        assert_ne!(layout.gen(3, 7), layout.gen(3, 8));
        assert_eq!(layout.gen(3, 7), layout.gen(3, 9));
        let other = Layout::new("vp", "other-group", "views").expect("valid prefix");
        assert_ne!(other.meta(3), meta);
        assert!(Layout::new("v{p", "g", "t").is_err());
        let pattern = Layout::new("v*p", "group", "views")
            .expect("valid prefix")
            .pattern();
        assert!(pattern.starts_with("v\\*p:{"), "{pattern}");
        assert!(pattern.ends_with(".*"), "{pattern}");
    }

    #[test]
    fn counts_make_one_total_field_and_one_field_per_day() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("date");
        let mut counts = Counts::default();
        counts.add("resource:x", day(20), None);
        counts.add("resource:x", day(21), None);
        counts.add("resource:x", day(21), None);
        counts.add("resource:y", day(21), None);
        let mut made = fields(&counts);
        made.sort();
        assert_eq!(
            made,
            vec![
                ("d:resource:x:2026-11-20".to_owned(), 1),
                ("d:resource:x:2026-11-21".to_owned(), 2),
                ("d:resource:y:2026-11-21".to_owned(), 1),
                ("t:resource:x".to_owned(), 3),
                ("t:resource:y".to_owned(), 1),
            ]
        );
        assert_eq!(counts.fields(), fields(&counts));
        assert_eq!(total_field("resource:x"), "t:resource:x");
        assert_eq!(day_field("resource:x", day(21)), "d:resource:x:2026-11-21");
    }
}
