//! The names of a partition's keys and of the fields that hold a counter key's
//! total and days (see the head of this module's parent for the layout).

use std::fmt::Write;

use chrono::NaiveDate;

use crate::counts::Counts;

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
pub(crate) fn total_field(key: &str) -> String {
    let mut name = String::with_capacity(2 + key.len());
    push_total_field(&mut name, key);
    name
}

/// The field of a key's views on `day` in a generation hash: `d:<key>:<YYYY-MM-DD>`.
pub(crate) fn day_field(key: &str, day: NaiveDate) -> String {
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
pub(crate) fn for_each_field(counts: &Counts, mut f: impl FnMut(&str, i64)) {
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

/// The fields of [`for_each_field`], collected: what [`PendingStore::restore`](super::PendingStore::restore) writes.
pub fn fields(counts: &Counts) -> Vec<(String, i64)> {
    let mut out = Vec::with_capacity(counts.len() * 2);
    for_each_field(counts, |name, n| out.push((name.to_owned(), n)));
    out
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
