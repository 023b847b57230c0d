//! The flush.
//!
//! A flush is one transaction that
//! 1. locks the flushed partitions' rows in `aggregator_partitions` (`FOR UPDATE`, in
//!    partition order) and checks that their `epoch` is still the flusher's, so a
//!    partition taken over by another aggregator is never written by its old owner;
//! 2. takes, shared, the write lock of every month its rows touch, so that no
//!    rebuild of such a month runs meanwhile (see [`crate::store::backfill::lock_months`]);
//! 3. adds the deltas to `view_counter_total` and `view_counter_daily` with one
//!    multi-row upsert each, keys in sorted order so concurrent flushers cannot
//!    deadlock on counter rows;
//! 4. merges the visitor sketches of the same views into `view_visitors_daily`
//!    (see [`crate::store::visitors`]), key-days in sorted order;
//! 5. moves each partition's `next_offset` and `flushed_gen` forward, and records the
//!    flush request it answers (see [`viewpipe_runtime::jobs`]).
//!
//! Counts, visitors and offsets therefore commit together or not at all.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, TransactionTrait};

use super::{LogMarks, Scope};
use crate::store::counts::{Counts, KeyCounts};
use viewpipe_runtime::sql::stmt;

/// A partition's new position, written with the counts it covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionCommit {
    pub partition: i32,
    pub epoch: i64,
    /// The new resume point.
    pub next_offset: i64,
    /// The `next_offset` the sealed generation extends (-1: the row had none): it is
    /// added only to a row still there, so a second owner of one epoch (a Postgres
    /// restored to before a claim) cannot add a generation beside the other's.
    /// `None`: not checked (rows written by hand in tests).
    pub extends: Option<i64>,
    /// The generation this flush seals; it becomes `flushed_gen`.
    pub gen: i64,
    /// False for a commit that only answers a flush request: it seals nothing, and
    /// `next_offset` and `gen` repeat the partition's flushed position.
    pub seals: bool,
    /// The newest flush request (`jobs.seq`) this flush answers; 0 for none.
    pub flush_seq: i64,
    /// Written with a sealing commit.
    pub marks: LogMarks,
    /// The newest `occurredAt` counted from the partition so far; a sealing commit
    /// moves the partition's `event_clock` up to it (never past the flush's time).
    pub event_clock: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushOutcome {
    pub total_rows: u64,
    pub daily_rows: u64,
    /// `view_visitors_daily` rows changed (not in [`FlushOutcome::rows`]).
    pub visitor_rows: u64,
    /// This very flush had committed before (its reply was lost); nothing was
    /// written again.
    pub already_committed: bool,
}

impl FlushOutcome {
    pub fn rows(&self) -> u64 {
        self.total_rows + self.daily_rows
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// These partitions now belong to a newer epoch; nothing was written.
    #[error("partitions {0:?} were taken over by another aggregator")]
    Fenced(Vec<i32>),
    /// Postgres holds an older epoch for these partitions than the one the flush was
    /// claimed under (or no row at all): it went back in time (a restore, a failover
    /// to a lagging replica, rows deleted). Nothing was written.
    #[error("partitions {0:?}: Postgres holds an older claim than ours; it went back in time")]
    Behind(Vec<i32>),
    /// Postgres holds a position the flush neither builds on nor wrote: it went back
    /// (or forward) under the aggregator. Nothing was written.
    #[error(
        "partition {partition}: Postgres has flushed generation {found}; this flush seals {gen}"
    )]
    Diverged {
        partition: i32,
        gen: i64,
        found: i64,
    },
    #[error("Postgres: {0}")]
    Db(#[from] DbErr),
}

/// A partition's position as a [`flush`] finds it under its lock.
#[derive(FromQueryResult)]
struct Position {
    partition: i32,
    epoch: i64,
    flushed_gen: i64,
    next_offset: i64,
}

/// Writes `counts` (one per flushed partition; a key may appear in several) and the
/// partitions' new positions in one transaction.
///
/// Each sealing commit builds on generation `gen - 1` being flushed. A flush sent
/// again after its reply was lost finds its own generation and offset written, and
/// writes nothing the second time ([`FlushOutcome::already_committed`]).
pub async fn flush(
    db: &DatabaseConnection,
    scope: &Scope,
    counts: &[&Counts],
    commits: &[PartitionCommit],
) -> Result<FlushOutcome, FlushError> {
    let txn = db.begin().await?;

    let mut commits: Vec<&PartitionCommit> = commits.iter().collect();
    commits.sort_by_key(|c| c.partition);
    let partitions: Vec<i32> = commits.iter().map(|c| c.partition).collect();
    let rows = Position::find_by_statement(stmt(
        "SELECT partition, epoch, flushed_gen, next_offset FROM aggregator_partitions
         WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
         ORDER BY partition FOR UPDATE",
        vec![
            scope.group.clone().into(),
            scope.topic.clone().into(),
            partitions.into(),
        ],
    ))
    .all(&txn)
    .await?;
    let current: BTreeMap<i32, (i64, i64, i64)> = rows
        .into_iter()
        .map(|r| (r.partition, (r.epoch, r.flushed_gen, r.next_offset)))
        .collect();
    let epoch_of = |c: &PartitionCommit| current.get(&c.partition).map_or(0, |r| r.0);
    let behind: Vec<i32> = commits
        .iter()
        .filter(|c| epoch_of(c) < c.epoch)
        .map(|c| c.partition)
        .collect();
    if !behind.is_empty() {
        txn.rollback().await?;
        return Err(FlushError::Behind(behind));
    }
    let fenced: Vec<i32> = commits
        .iter()
        .filter(|c| epoch_of(c) > c.epoch)
        .map(|c| c.partition)
        .collect();
    if !fenced.is_empty() {
        txn.rollback().await?;
        return Err(FlushError::Fenced(fenced));
    }
    let (mut fresh, mut repeated) = (0, 0);
    for c in commits.iter().filter(|c| c.seals) {
        let (_, found, next) = current[&c.partition];
        if found == c.gen - 1 && c.extends.is_none_or(|from| from == next) {
            fresh += 1;
        } else if found == c.gen && next == c.next_offset {
            repeated += 1;
        } else {
            txn.rollback().await?;
            return Err(FlushError::Diverged {
                partition: c.partition,
                gen: c.gen,
                found,
            });
        }
    }
    if repeated > 0 {
        txn.rollback().await?;
        if fresh > 0 {
            // A flush commits all its partitions or none: half of it cannot be in.
            let c = commits.iter().find(|c| c.seals).map_or(0, |c| c.partition);
            return Err(FlushError::Diverged {
                partition: c,
                gen: 0,
                found: current[&c].1,
            });
        }
        return Ok(FlushOutcome {
            already_committed: true,
            ..FlushOutcome::default()
        });
    }

    crate::store::backfill::lock_months(&txn, counts).await?;
    let mut outcome = add_counts(&txn, counts).await?;
    outcome.visitor_rows = crate::store::visitors::rows::merge_into(&txn, counts).await?;

    if !commits.is_empty() {
        // 0 stands for "no mark" in the arrays (a mark is never 0).
        let anchor = |c: &PartitionCommit| c.marks.anchor.filter(|_| c.seals).unwrap_or((-1, 0));
        txn.execute(stmt(
            "UPDATE aggregator_partitions AS a
             SET next_offset = CASE WHEN u.seals THEN u.next_offset ELSE a.next_offset END,
                 flushed_gen = CASE WHEN u.seals THEN u.gen ELSE a.flushed_gen END,
                 flush_seq = GREATEST(a.flush_seq, u.flush_seq),
                 last_mark = CASE WHEN u.seals THEN NULLIF(u.last_mark, 0) ELSE a.last_mark END,
                 anchor_offset = CASE WHEN u.anchor_mark <> 0
                                       AND (u.new_log OR a.anchor_mark IS NULL)
                                  THEN u.anchor_offset ELSE a.anchor_offset END,
                 anchor_mark = CASE WHEN u.anchor_mark <> 0
                                     AND (u.new_log OR a.anchor_mark IS NULL)
                                THEN u.anchor_mark ELSE a.anchor_mark END,
                 event_clock = CASE WHEN u.seals AND u.clock_ms <> 0
                                THEN GREATEST(a.event_clock,
                                              LEAST(to_timestamp(u.clock_ms / 1000.0), now()))
                                ELSE a.event_clock END,
                 updated_at = now()
             FROM unnest($3::int4[], $4::int8[], $5::int8[], $6::int8[], $7::bool[],
                         $8::int8[], $9::int8[], $10::int8[], $11::bool[], $12::int8[])
                  AS u(partition, next_offset, gen, flush_seq, seals,
                       last_mark, anchor_offset, anchor_mark, new_log, clock_ms)
             WHERE a.consumer_group = $1 AND a.topic = $2 AND a.partition = u.partition",
            vec![
                scope.group.clone().into(),
                scope.topic.clone().into(),
                commits
                    .iter()
                    .map(|c| c.partition)
                    .collect::<Vec<i32>>()
                    .into(),
                commits
                    .iter()
                    .map(|c| c.next_offset)
                    .collect::<Vec<i64>>()
                    .into(),
                commits.iter().map(|c| c.gen).collect::<Vec<i64>>().into(),
                commits
                    .iter()
                    .map(|c| c.flush_seq)
                    .collect::<Vec<i64>>()
                    .into(),
                commits
                    .iter()
                    .map(|c| c.seals)
                    .collect::<Vec<bool>>()
                    .into(),
                commits
                    .iter()
                    .map(|c| c.marks.last)
                    .collect::<Vec<i64>>()
                    .into(),
                commits
                    .iter()
                    .map(|c| anchor(c).0)
                    .collect::<Vec<i64>>()
                    .into(),
                commits
                    .iter()
                    .map(|c| anchor(c).1)
                    .collect::<Vec<i64>>()
                    .into(),
                commits
                    .iter()
                    .map(|c| c.marks.new_log)
                    .collect::<Vec<bool>>()
                    .into(),
                // 0 stands for "no clock" (no event is dated at the epoch's first ms).
                commits
                    .iter()
                    .map(|c| c.event_clock.map_or(0, |t| t.timestamp_millis()))
                    .collect::<Vec<i64>>()
                    .into(),
            ],
        ))
        .await?;
    }
    let answered = commits.iter().map(|c| c.flush_seq).max().unwrap_or(0);
    if answered > 0 {
        viewpipe_runtime::jobs::answer_flush(&txn, scope, answered, outcome.rows()).await?;
    }
    txn.commit().await?;
    Ok(outcome)
}

/// Keys per upsert statement: bounds the memory a flush of a large generation takes
/// while it is encoded.
const UPSERT_CHUNK: usize = 20_000;

/// Adds counts to the total and daily rows (zero counts skipped), in key order so
/// that concurrent flushers cannot deadlock. A key counted by several partitions is
/// summed first: one upsert may not touch a row twice.
async fn add_counts(txn: &impl ConnectionTrait, counts: &[&Counts]) -> Result<FlushOutcome, DbErr> {
    let keys = sorted_keys(counts);
    let mut merged: Vec<(&str, std::borrow::Cow<'_, KeyCounts>)> = Vec::with_capacity(keys.len());
    for (key, c) in keys {
        match merged.last_mut() {
            Some((last, sum)) if *last == key => sum.to_mut().merge(c),
            _ => merged.push((key, std::borrow::Cow::Borrowed(c))),
        }
    }
    merged.retain(|(_, c)| c.total() != 0);
    let mut outcome = FlushOutcome::default();
    for chunk in merged.chunks(UPSERT_CHUNK) {
        let (total_rows, daily_rows) = upsert(txn, chunk).await?;
        outcome.total_rows += total_rows;
        outcome.daily_rows += daily_rows;
    }
    Ok(outcome)
}

/// Every key of `counts` in byte order (a key counted by several partitions once
/// per partition, side by side). Keys of one namespace share a prefix
/// (`resource:`), which makes comparing them as strings slow (a tenth of the
/// aggregator's time on wide traffic): keys are grouped by namespace, and within
/// one sorted by the 8 bytes after the prefix the group shares, compared whole only
/// when those are equal. Namespaces end at their first `:`, so none is a prefix of
/// another unless it is a whole key without `:`, which sorts first either way: the
/// groups in order of their namespace are in byte order too.
fn sorted_keys<'c>(counts: &[&'c Counts]) -> Vec<(&'c str, &'c KeyCounts)> {
    let mut groups: BTreeMap<&str, Vec<(u64, &str, &KeyCounts)>> = BTreeMap::new();
    for (key, c) in counts.iter().flat_map(|c| c.iter()) {
        let namespace = key.find(':').map_or(key, |i| &key[..=i]);
        groups.entry(namespace).or_default().push((0, key, c));
    }
    let mut sorted = Vec::with_capacity(counts.iter().map(|c| c.len()).sum());
    for mut keys in groups.into_values() {
        let first = keys[0].1.as_bytes();
        let shared = keys.iter().fold(first.len(), |n, (_, k, _)| {
            first[..n]
                .iter()
                .zip(k.as_bytes())
                .take_while(|(a, b)| a == b)
                .count()
        });
        for (rank, key, _) in &mut keys {
            *rank = rank_of(&key.as_bytes()[shared..]);
        }
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        sorted.extend(keys.into_iter().map(|(_, key, c)| (key, c)));
    }
    sorted
}

/// The first 8 bytes of `tail` as a big-endian number (shorter tails padded with
/// zeros): ordering by it agrees with ordering by the bytes, ties aside.
fn rank_of(tail: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    let n = tail.len().min(8);
    first[..n].copy_from_slice(&tail[..n]);
    u64::from_be_bytes(first)
}

/// Upserts into both counter tables: two plain statements over arrays, rows in key
/// (and day) order. Each daily row carries its key rather than pointing at it: a join
/// of the two arrays made the planner expect the product of their lengths and
/// compile the statement (JIT) at every flush's first runs; JIT is now off for every
/// session (`viewpipe_runtime::db::SESSION_PLANNING`).
async fn upsert(
    txn: &impl ConnectionTrait,
    merged: &[(&str, std::borrow::Cow<'_, KeyCounts>)],
) -> Result<(u64, u64), DbErr> {
    let n = merged.len();
    let (mut keys, mut paths, mut totals) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut day_keys, mut days, mut counts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (key, c) in merged {
        keys.push((*key).to_owned());
        paths.push(c.path().unwrap_or_default().to_owned());
        totals.push(c.total());
        let mut key_days: Vec<&(NaiveDate, i64)> =
            c.days().iter().filter(|(_, n)| *n != 0).collect();
        key_days.sort_unstable();
        for (day, count) in key_days {
            day_keys.push((*key).to_owned());
            days.push(*day);
            counts.push(*count);
        }
    }
    let total = txn
        .execute(stmt(
            "INSERT INTO view_counter_total AS t
                 (key, namespace, entity_id, path, total, created_at, updated_at)
             SELECT key, split_part(key, ':', 1), substr(key, strpos(key, ':') + 1),
                    NULLIF(path, ''), total, now(), now()
             FROM unnest($1::text[], $2::text[], $3::int8[])
                  WITH ORDINALITY AS u(key, path, total, i)
             ORDER BY i
             ON CONFLICT (key) DO UPDATE
             SET total = t.total + EXCLUDED.total,
                 path = COALESCE(EXCLUDED.path, t.path),
                 updated_at = EXCLUDED.updated_at",
            vec![keys.into(), paths.into(), totals.into()],
        ))
        .await?;
    let daily = txn
        .execute(stmt(
            "INSERT INTO view_counter_daily AS d (key, day, count, created_at, updated_at)
             SELECT key, day, count, now(), now()
             FROM unnest($1::text[], $2::date[], $3::int8[])
                  WITH ORDINALITY AS x(key, day, count, i)
             ORDER BY i
             ON CONFLICT (key, day) DO UPDATE
             SET count = d.count + EXCLUDED.count, updated_at = EXCLUDED.updated_at",
            vec![day_keys.into(), days.into(), counts.into()],
        ))
        .await?;
    Ok((total.rows_affected(), daily.rows_affected()))
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn keys_come_out_in_byte_order_whatever_prefix_they_share() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).expect("date");
        let sets: [&[&str]; 5] = [
            &[
                "resource:b",
                "resource:a",
                "resource:ab",
                "resource:",
                "resource:a\u{0}",
            ],
            &[
                "r:9",
                "r:10",
                "x",
                "r:1",
                "résumé:1",
                "r:1\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}z",
            ],
            &[
                "same-prefix-long:00000000a",
                "same-prefix-long:00000000b",
                "same-prefix-long:0000000",
            ],
            &["only"],
            &[
                "resource:x",
                "course:b",
                "course:",
                "c",
                "course",
                "course:a",
                "a:b:c",
                "a:",
                "ab",
                "resource:éa",
                "resource:\u{0}",
                "course:b\u{0}",
            ],
        ];
        for keys in sets {
            let (mut a, mut b) = (Counts::default(), Counts::default());
            for (i, key) in keys.iter().enumerate() {
                a.add(key, day, None);
                if i % 2 == 0 {
                    b.add(key, day, None);
                }
            }
            let sorted: Vec<&str> = sorted_keys(&[&a, &b]).into_iter().map(|(k, _)| k).collect();
            let mut want: Vec<&str> = keys.iter().chain(keys.iter().step_by(2)).copied().collect();
            want.sort_unstable();
            assert_eq!(sorted, want);
        }
    }

    #[test]
    fn many_generated_keys_come_out_in_byte_order() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).expect("date");
        let alphabet = [
            "a",
            "b",
            ":",
            "\u{0}",
            "é",
            "resource:",
            "course:",
            "00000000",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut counts = Counts::default();
        let mut want = Vec::new();
        for _ in 0..5000 {
            let parts = 1 + next() % 5;
            let key: String = (0..parts)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if counts.get(&key).is_none() {
                want.push(key.clone());
            }
            counts.add(&key, day, None);
        }
        want.sort_unstable();
        let sorted: Vec<&str> = sorted_keys(&[&counts])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(sorted, want);
    }
}
