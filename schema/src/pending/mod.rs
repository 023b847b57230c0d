//! The Redis key layout of pending counts: what the aggregators have consumed and
//! Postgres does not hold yet, kept per partition and flush generation. The aggregator
//! writes it (its `store::pending`), the ingest reads it (its `read::pending`).
//!
//! Every key of partition `p` carries the hash tag `{<scope>.<p>}`, so one partition's
//! keys share a Redis Cluster slot and each script touches one slot. `<scope>`
//! is a short hash of the consumer group and topic, so two deployments sharing a prefix
//! cannot meet.
//! - `{prefix}:{s.p}:m`, the partition's meta hash: `epoch`, the newest owner epoch
//!   that wrote it; `owner`, `epoch:token` of the claim that fenced or restored it
//!   (two claims can share an epoch after a Postgres restore; the token tells them
//!   apart); `gen`, the newest generation written; `live`, the epoch of the owner
//!   that vouches Redis holds all of the partition's pending counts (the aggregator's
//!   `store::pending`, "Loss", says how it is lost and restored); `replid`, the
//!   server's replication id when the fence or mark was written: a promoted replica or
//!   a restarted server has another, and a mark written on another data set vouches
//!   for nothing ([`read::live_mark`]).
//! - `{prefix}:{s.p}:g0` and `:g1`: the counts of the partition's even and odd
//!   generations. At most two generations of a partition are unflushed at once (one
//!   being flushed, the next being written) and they differ in parity, so two hashes
//!   suffice and a reader can name every key it reads. Fields: `@g` the generation,
//!   `@o` the highest offset applied, `t:<key>` views of the key, `d:<key>:<day>` views
//!   of the key on that UTC day.
//!
//! Client-chosen `eventId`s are remembered in Postgres (the aggregator's
//! `event_ids`), not here. A pending key
//! therefore costs two hash fields per generation (its total and one per day), whatever
//! its traffic.

use std::fmt::Write;

pub mod homes;
pub mod read;

use chrono::NaiveDate;

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

/// Appends [`total_field`] to `name`.
pub fn push_total_field(name: &mut String, key: &str) {
    name.push_str("t:");
    name.push_str(key);
}

/// Appends [`day_field`] to `name`.
pub fn push_day_field(name: &mut String, key: &str, day: NaiveDate) {
    let _ = write!(name, "d:{key}:{day}");
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
    fn a_key_has_one_total_field_and_one_field_per_day() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).expect("date");
        assert_eq!(total_field("resource:x"), "t:resource:x");
        assert_eq!(day_field("resource:x", day), "d:resource:x:2026-11-21");
    }
}
