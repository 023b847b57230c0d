//! The Postgres side of the counts.
//!
//! A flush is one transaction that
//! 1. locks the flushed partitions' rows in `aggregator_partitions` (`FOR UPDATE`, in
//!    partition order) and checks that their `epoch` is still the flusher's, so a
//!    partition taken over by another aggregator is never written by its old owner;
//! 2. adds the deltas to `view_counter_total` and `view_counter_daily` with one
//!    multi-row upsert each, keys in sorted order so concurrent flushers cannot
//!    deadlock on counter rows;
//! 3. moves each partition's `next_offset` and `flushed_gen` forward, and records the
//!    flush request it answers (see [`crate::jobs`]).
//!
//! Counts and offsets therefore commit together or not at all.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};

/// Which consumer group and topic the partition rows belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub group: String,
    pub topic: String,
}

/// What an aggregator learns when it takes a partition over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    /// Where to resume; `None` when nothing was ever flushed for the partition.
    pub next_offset: Option<i64>,
    pub flushed_gen: i64,
    /// The new owner's epoch; flushes under an older epoch are refused.
    pub epoch: i64,
}

/// Views to add to one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyDelta {
    pub namespace: String,
    pub entity_id: String,
    pub path: Option<String>,
    pub total: i64,
    pub days: BTreeMap<NaiveDate, i64>,
}

impl KeyDelta {
    /// Adds another delta of the same key (e.g. from another partition).
    pub fn merge(&mut self, other: &KeyDelta) {
        self.total += other.total;
        for (day, n) in &other.days {
            *self.days.entry(*day).or_default() += n;
        }
        if other.path.is_some() {
            self.path.clone_from(&other.path);
        }
    }
}

/// A partition's new position, written with the counts it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionCommit {
    pub partition: i32,
    pub epoch: i64,
    /// The new resume point; -1 keeps the current one (nothing consumed yet).
    pub next_offset: i64,
    /// The generation this flush seals; it becomes `flushed_gen`.
    pub gen: i64,
    /// The newest flush request (`jobs.seq`) this flush answers; 0 for none.
    pub flush_seq: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushOutcome {
    pub total_rows: u64,
    pub daily_rows: u64,
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
    #[error("Postgres: {0}")]
    Db(#[from] DbErr),
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Takes a partition over: bumps its epoch (creating the row on first use) and
/// returns where it stands.
pub async fn claim(
    db: &impl ConnectionTrait,
    scope: &Scope,
    partition: i32,
) -> Result<Claim, DbErr> {
    let row = db
        .query_one(stmt(
            "INSERT INTO aggregator_partitions AS a
                 (consumer_group, topic, partition, next_offset, flushed_gen, epoch, updated_at)
             VALUES ($1, $2, $3, -1, 0, 1, now())
             ON CONFLICT (consumer_group, topic, partition)
             DO UPDATE SET epoch = a.epoch + 1, updated_at = now()
             RETURNING next_offset, flushed_gen, epoch",
            vec![
                scope.group.clone().into(),
                scope.topic.clone().into(),
                partition.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("claim returned no row".into()))?;
    let next_offset: i64 = row.try_get_by_index(0)?;
    Ok(Claim {
        partition,
        next_offset: (next_offset >= 0).then_some(next_offset),
        flushed_gen: row.try_get_by_index(1)?,
        epoch: row.try_get_by_index(2)?,
    })
}

/// Writes `deltas` and the partitions' new positions in one transaction.
pub async fn flush(
    db: &DatabaseConnection,
    scope: &Scope,
    deltas: &BTreeMap<String, KeyDelta>,
    commits: &[PartitionCommit],
) -> Result<FlushOutcome, FlushError> {
    let txn = db.begin().await?;

    let mut commits: Vec<&PartitionCommit> = commits.iter().collect();
    commits.sort_by_key(|c| c.partition);
    let partitions: Vec<i32> = commits.iter().map(|c| c.partition).collect();
    let rows = txn
        .query_all(stmt(
            "SELECT partition, epoch FROM aggregator_partitions
             WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)
             ORDER BY partition FOR UPDATE",
            vec![
                scope.group.clone().into(),
                scope.topic.clone().into(),
                partitions.into(),
            ],
        ))
        .await?;
    let mut current = BTreeMap::new();
    for row in rows {
        current.insert(
            row.try_get_by_index::<i32>(0)?,
            row.try_get_by_index::<i64>(1)?,
        );
    }
    let fenced: Vec<i32> = commits
        .iter()
        .filter(|c| current.get(&c.partition) != Some(&c.epoch))
        .map(|c| c.partition)
        .collect();
    if !fenced.is_empty() {
        txn.rollback().await?;
        return Err(FlushError::Fenced(fenced));
    }

    let outcome = add_counts(&txn, deltas).await?;

    if !commits.is_empty() {
        txn.execute(stmt(
            "UPDATE aggregator_partitions AS a
             SET next_offset = CASE WHEN u.next_offset >= 0 THEN u.next_offset
                                    ELSE a.next_offset END,
                 flushed_gen = u.gen,
                 flush_seq = GREATEST(a.flush_seq, u.flush_seq),
                 updated_at = now()
             FROM unnest($3::int4[], $4::int8[], $5::int8[], $6::int8[])
                  AS u(partition, next_offset, gen, flush_seq)
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
            ],
        ))
        .await?;
    }
    let answered = commits.iter().map(|c| c.flush_seq).max().unwrap_or(0);
    if answered > 0 {
        crate::jobs::answer_flush(&txn, scope, answered, outcome.rows()).await?;
    }
    txn.commit().await?;
    Ok(outcome)
}

/// Adds deltas to the total and daily rows (zero counts skipped), in key order.
pub async fn add_counts(
    txn: &impl ConnectionTrait,
    deltas: &BTreeMap<String, KeyDelta>,
) -> Result<FlushOutcome, DbErr> {
    let live = || deltas.iter().filter(|(_, d)| d.total != 0);
    let mut outcome = FlushOutcome::default();
    if live().next().is_none() {
        return Ok(outcome);
    }
    let res = txn
        .execute(stmt(
            "INSERT INTO view_counter_total AS t
                 (key, namespace, entity_id, path, total, created_at, updated_at)
             SELECT u.key, u.namespace, u.entity_id, NULLIF(u.path, ''), u.total, now(), now()
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
                  AS u(key, namespace, entity_id, path, total)
             ON CONFLICT (key) DO UPDATE
             SET total = t.total + EXCLUDED.total,
                 path = COALESCE(EXCLUDED.path, t.path),
                 updated_at = EXCLUDED.updated_at",
            vec![
                live()
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<String>>()
                    .into(),
                live()
                    .map(|(_, d)| d.namespace.clone())
                    .collect::<Vec<String>>()
                    .into(),
                live()
                    .map(|(_, d)| d.entity_id.clone())
                    .collect::<Vec<String>>()
                    .into(),
                live()
                    .map(|(_, d)| d.path.clone().unwrap_or_default())
                    .collect::<Vec<String>>()
                    .into(),
                live().map(|(_, d)| d.total).collect::<Vec<i64>>().into(),
            ],
        ))
        .await?;
    outcome.total_rows = res.rows_affected();

    let days = || {
        live().flat_map(|(k, d)| {
            d.days
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(move |(day, n)| (k, *day, *n))
        })
    };
    let res = txn
        .execute(stmt(
            "INSERT INTO view_counter_daily AS d (key, day, count, created_at, updated_at)
             SELECT u.key, u.day, u.count, now(), now()
             FROM unnest($1::text[], $2::date[], $3::int8[]) AS u(key, day, count)
             ON CONFLICT (key, day) DO UPDATE
             SET count = d.count + EXCLUDED.count, updated_at = EXCLUDED.updated_at",
            vec![
                days()
                    .map(|(k, _, _)| k.clone())
                    .collect::<Vec<String>>()
                    .into(),
                days()
                    .map(|(_, day, _)| day)
                    .collect::<Vec<NaiveDate>>()
                    .into(),
                days().map(|(_, _, n)| n).collect::<Vec<i64>>().into(),
            ],
        ))
        .await?;
    outcome.daily_rows = res.rows_affected();
    Ok(outcome)
}

/// What Postgres holds for one key, and every partition's `flushed_gen`, read in one
/// statement (one snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub total: i64,
    /// Daily rows in the asked range, ascending (days without a row are absent).
    pub days: Vec<(NaiveDate, i64)>,
    /// `(partition, flushed_gen)` of every partition of the scope.
    pub gens: Vec<(i32, i64)>,
}

/// Reads a key's flushed total, its daily rows in `days` (inclusive; `None` for
/// none) and every partition's `flushed_gen`.
pub async fn snapshot(
    db: &impl ConnectionTrait,
    scope: &Scope,
    key: &str,
    days: Option<(NaiveDate, NaiveDate)>,
) -> Result<Snapshot, DbErr> {
    // Without a range the bounds are NULL, and `BETWEEN` matches no row.
    let (from, to) = (days.map(|d| d.0), days.map(|d| d.1));
    let row = db
        .query_one(stmt(
            "SELECT COALESCE((SELECT total FROM view_counter_total WHERE key = $1), 0)::int8,
                    ARRAY(SELECT partition FROM aggregator_partitions
                          WHERE consumer_group = $2 AND topic = $3 ORDER BY partition),
                    ARRAY(SELECT flushed_gen FROM aggregator_partitions
                          WHERE consumer_group = $2 AND topic = $3 ORDER BY partition),
                    ARRAY(SELECT day FROM view_counter_daily
                          WHERE key = $1 AND day BETWEEN $4 AND $5 ORDER BY day),
                    ARRAY(SELECT count FROM view_counter_daily
                          WHERE key = $1 AND day BETWEEN $4 AND $5 ORDER BY day)",
            vec![
                key.into(),
                scope.group.clone().into(),
                scope.topic.clone().into(),
                from.into(),
                to.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("snapshot query returned no row".into()))?;
    let partitions: Vec<i32> = row.try_get_by_index(1)?;
    let gens: Vec<i64> = row.try_get_by_index(2)?;
    let day_list: Vec<NaiveDate> = row.try_get_by_index(3)?;
    let counts: Vec<i64> = row.try_get_by_index(4)?;
    Ok(Snapshot {
        total: row.try_get_by_index(0)?,
        days: day_list.into_iter().zip(counts).collect(),
        gens: partitions.into_iter().zip(gens).collect(),
    })
}

/// The most viewed keys of `namespace` over `from..=to` (flushed counts), count
/// descending, ties by content id ascending (byte order). Returns `(content id, count)`.
pub async fn top(
    db: &impl ConnectionTrait,
    namespace: &str,
    from: NaiveDate,
    to: NaiveDate,
    limit: u32,
) -> Result<Vec<(String, i64)>, DbErr> {
    let rows = db
        .query_all(stmt(
            "SELECT substr(key, length($1) + 2) AS id, SUM(count)::int8 AS n
             FROM view_counter_daily
             WHERE day BETWEEN $2 AND $3 AND starts_with(key, $1 || ':')
             GROUP BY key
             ORDER BY n DESC, key COLLATE \"C\" ASC
             LIMIT $4",
            vec![
                namespace.into(),
                from.into(),
                to.into(),
                i64::from(limit).into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .collect()
}
