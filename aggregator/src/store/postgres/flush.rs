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

/// Rows one [`upsert`] wrote in each counter table.
#[derive(FromQueryResult)]
struct Upserted {
    total_rows: i64,
    daily_rows: i64,
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
    let mut keys: Vec<(&str, &KeyCounts)> = counts.iter().flat_map(|c| c.iter()).collect();
    keys.sort_unstable_by_key(|(k, _)| *k);
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

/// One statement upserting into both counter tables. Each key is sent once (its
/// namespace and id are split off in SQL, its days point at it by position), and rows
/// are written in key order.
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
    let (mut day_of, mut days, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (key, c)) in merged.iter().enumerate() {
        keys.push((*key).to_owned());
        paths.push(c.path().unwrap_or_default().to_owned());
        totals.push(c.total());
        let mut key_days: Vec<&(NaiveDate, i64)> =
            c.days().iter().filter(|(_, n)| *n != 0).collect();
        key_days.sort_unstable();
        for (day, count) in key_days {
            day_of.push(i as i64 + 1);
            days.push(*day);
            counts.push(*count);
        }
    }
    let row = Upserted::find_by_statement(stmt(
        "WITH u AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
                 WITH ORDINALITY AS u(key, path, total, i)),
         t AS (
             INSERT INTO view_counter_total AS t
                 (key, namespace, entity_id, path, total, created_at, updated_at)
             SELECT key, split_part(key, ':', 1), substr(key, strpos(key, ':') + 1),
                    NULLIF(path, ''), total, now(), now()
             FROM u ORDER BY i
             ON CONFLICT (key) DO UPDATE
             SET total = t.total + EXCLUDED.total,
                 path = COALESCE(EXCLUDED.path, t.path),
                 updated_at = EXCLUDED.updated_at
             RETURNING 1),
         d AS (
             INSERT INTO view_counter_daily AS d (key, day, count, created_at, updated_at)
             SELECT u.key, x.day, x.count, now(), now()
             FROM unnest($4::int8[], $5::date[], $6::int8[]) WITH ORDINALITY AS x(i, day, count, o)
             JOIN u ON u.i = x.i
             ORDER BY x.o
             ON CONFLICT (key, day) DO UPDATE
             SET count = d.count + EXCLUDED.count, updated_at = EXCLUDED.updated_at
             RETURNING 1)
         SELECT (SELECT count(*) FROM t)::int8 AS total_rows,
                (SELECT count(*) FROM d)::int8 AS daily_rows",
        vec![
            keys.into(),
            paths.into(),
            totals.into(),
            day_of.into(),
            days.into(),
            counts.into(),
        ],
    ))
    .one(txn)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("upsert returned no row".into()))?;
    Ok((row.total_rows as u64, row.daily_rows as u64))
}
