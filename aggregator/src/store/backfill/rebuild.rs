//! A month's rebuild: one transaction that makes the month's daily and visitor rows
//! the replay's, moves each key's total by the difference and marks the month's job.
//!
//! Its order keeps it exact beside live flushes and short for them:
//! 1. the month's write lock, exclusively ([`super::month_writes`]), before anything
//!    is read: no flush of the month is in flight while its rows are replaced, and
//!    none begins until the commit;
//! 2. the retention mark, share-locked: a month retention pruned is refused;
//! 3. the month's daily rows deleted and the replay's inserted, then its visitor rows
//!    replaced;
//! 4. last, one statement moving each key's total by (views written − views
//!    removed), in key order like the flushes. A live flush of another month that
//!    touches the same key waits for the rebuild's commit only, never for the
//!    month's rows to be written. An existing total row keeps its `path`, the latest
//!    one seen live; a key new to the table takes the replay's.
//!
//! So `total = Σ daily` holds, and a rerun changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{month_writes, update_job, Month};
use crate::store::counts::{Counts, KeyCounts};
use crate::store::retention;
use viewpipe_runtime::sql::stmt;
use viewpipe_schema::entities::JobStatus;

/// Daily rows per insert statement: bounds the memory a large month takes while it
/// is encoded.
const DAY_CHUNK: usize = 50_000;

/// What a month's rebuild deleted of one key.
#[derive(FromQueryResult)]
struct Removed {
    key: String,
    views: i64,
    daily_rows: i64,
}

/// What a month's rebuild changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Daily rows the month had before, and their views.
    pub rows_removed: u64,
    pub views_removed: i64,
    /// Daily rows written, and their views.
    pub rows_written: u64,
    pub views_written: i64,
    /// `view_visitors_daily` rows the month had before, and rows written.
    pub visitor_rows_removed: u64,
    pub visitor_rows_written: u64,
}

/// Why a month was not rebuilt; nothing changed either way.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Retention deleted daily rows of the month.
    #[error("{}", retention::pruned_reason(*month_start, *pruned_before))]
    Pruned {
        month_start: NaiveDate,
        pruned_before: NaiveDate,
    },
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Replaces `month`'s daily rows with `counts` (views of that month only), replaces
/// the month's visitor rows with the sketches in `counts` and moves each key's total
/// by the difference, in one transaction on `db` (see the module doc for its order).
/// Deadlocks with live flushes are retried. A month retention pruned rows of is
/// refused ([`RebuildError::Pruned`]).
///
/// The same transaction marks `job` completed with `result(&outcome)`, so the
/// moment the month's lock is released, another run waiting for it sees that the
/// month was rebuilt (and no crash can leave a rebuilt month with a running job).
pub async fn rebuild_month(
    db: &DatabaseConnection,
    month: Month,
    counts: &Counts,
    job: Uuid,
    result: &(dyn Fn(&Rebuilt) -> serde_json::Value + Sync),
) -> Result<Rebuilt, RebuildError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match rebuild_once(db, month, counts, job, result).await {
            Err(RebuildError::Db(e))
                if attempt < 5 && e.to_string().contains("deadlock detected") =>
            {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            other => return other,
        }
    }
}

async fn rebuild_once(
    db: &DatabaseConnection,
    month: Month,
    counts: &Counts,
    job: Uuid,
    result: &(dyn Fn(&Rebuilt) -> serde_json::Value + Sync),
) -> Result<Rebuilt, RebuildError> {
    let txn = db.begin().await?;
    // A large month takes longer than the live services' limits allow; the lock
    // timeout also bounds the wait for the month's write lock below.
    txn.execute_unprepared("SET LOCAL statement_timeout = '15min'; SET LOCAL lock_timeout = '60s'")
        .await?;
    month_writes::lock_for_rebuild(&txn, month).await?;
    // Share-locked to the commit: the pruner cannot delete rows of this month while
    // we rebuild it, nor can we rebuild a month it has begun to prune.
    if let Some(pruned_before) = retention::mark_for_rebuild(&txn).await? {
        if month.first_day() < pruned_before {
            txn.rollback().await?;
            return Err(RebuildError::Pruned {
                month_start: month.first_day(),
                pruned_before,
            });
        }
    }
    let (from, until) = (month.first_day(), month.next().first_day());
    let removed = Removed::find_by_statement(stmt(
        "WITH gone AS (
             DELETE FROM view_counter_daily WHERE day >= $1 AND day < $2
             RETURNING key, count)
         SELECT key, sum(count)::int8 AS views, count(*)::int8 AS daily_rows
         FROM gone GROUP BY key",
        vec![from.into(), until.into()],
    ))
    .all(&txn)
    .await?;
    let mut outcome = Rebuilt::default();
    // Each key's views removed and written, in key order.
    let mut moves: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for r in &removed {
        outcome.rows_removed += r.daily_rows as u64;
        outcome.views_removed += r.views;
        moves.entry(&r.key).or_default().0 += r.views;
    }
    for (key, c) in counts.iter() {
        moves.entry(key).or_default().1 += c.total();
    }
    outcome.rows_written = insert_days(&txn, counts).await?;
    outcome.views_written = counts.views();
    let (visitors_removed, visitors_written) =
        crate::store::visitors::rows::replace_days(&txn, from, until, counts).await?;
    outcome.visitor_rows_removed = visitors_removed;
    outcome.visitor_rows_written = visitors_written;
    move_totals(&txn, &moves, counts).await?;
    update_job(&txn, job, JobStatus::Completed, result(&outcome), None).await?;
    txn.commit().await?;
    Ok(outcome)
}

/// Inserts the replay's daily rows (zero counts skipped), in key and day order. The
/// month's rows were just deleted and no flush of it can write meanwhile, so a
/// conflict is an error, never a sum.
async fn insert_days(txn: &impl ConnectionTrait, counts: &Counts) -> Result<u64, DbErr> {
    let mut rows: Vec<(&str, NaiveDate, i64)> = counts
        .iter()
        .flat_map(|(key, c)| c.days().iter().map(move |(day, n)| (key, *day, *n)))
        .filter(|(_, _, n)| *n != 0)
        .collect();
    rows.sort_unstable();
    let mut written = 0;
    for chunk in rows.chunks(DAY_CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|r| r.0.to_owned()).collect();
        let days: Vec<NaiveDate> = chunk.iter().map(|r| r.1).collect();
        let views: Vec<i64> = chunk.iter().map(|r| r.2).collect();
        written += txn
            .execute(stmt(
                "INSERT INTO view_counter_daily (key, day, count, created_at, updated_at)
                 SELECT key, day, count, now(), now()
                 FROM unnest($1::text[], $2::date[], $3::int8[]) WITH ORDINALITY
                      AS u(key, day, count, i)
                 ORDER BY i",
                vec![keys.into(), days.into(), views.into()],
            ))
            .await?
            .rows_affected();
    }
    Ok(written)
}

/// Moves each key's total by (views written − views removed), in one statement and
/// key order; keys that come out even are not touched. A key without a total row (so
/// without daily rows, while `total = Σ daily` holds) gets one with the replay's
/// path; an existing row keeps its own path.
async fn move_totals(
    txn: &impl ConnectionTrait,
    moves: &BTreeMap<&str, (i64, i64)>,
    counts: &Counts,
) -> Result<(), DbErr> {
    let (mut keys, mut diffs, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    for (key, (removed, written)) in moves.iter().filter(|(_, (r, w))| r != w) {
        keys.push((*key).to_owned());
        diffs.push(written - removed);
        let path = counts.get(key).and_then(KeyCounts::path);
        paths.push(path.unwrap_or_default().to_owned());
    }
    if keys.is_empty() {
        return Ok(());
    }
    txn.execute(stmt(
        "INSERT INTO view_counter_total AS t
             (key, namespace, entity_id, path, total, created_at, updated_at)
         SELECT key, split_part(key, ':', 1), substr(key, strpos(key, ':') + 1),
                NULLIF(path, ''), diff, now(), now()
         FROM unnest($1::text[], $2::int8[], $3::text[]) WITH ORDINALITY
              AS u(key, diff, path, i)
         ORDER BY i
         ON CONFLICT (key) DO UPDATE
         SET total = t.total + EXCLUDED.total, updated_at = EXCLUDED.updated_at",
        vec![keys.into(), diffs.into(), paths.into()],
    ))
    .await?;
    Ok(())
}
