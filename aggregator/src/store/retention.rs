//! Retention: deleting what is kept only for a while, in small batches that never
//! stand in a flush's way.
//!
//! - `view_counter_daily` and `view_visitors_daily`: rows of days before a cutoff
//!   (`RETAIN_DAILY_DAYS`). `view_counter_total` is never touched, so totals keep
//!   every view; for keys with pruned days `total = Σ daily` no longer holds.
//! - `jobs`: finished (completed or failed) jobs older than a cutoff
//!   (`RETAIN_JOBS_DAYS`), except each month's newest completed rebuild per replay
//!   topic, which a later backfill reads to know where the month began in the replay
//!   ([`crate::store::backfill::known_starts`]).
//! - `visitor_salts`: salts of days before yesterday, always: without the salt a
//!   visitor id can no longer be linked to the address and browser it was made from.
//!
//! # Not in a flush's way
//! Each batch is its own short transaction deleting at most [`BATCH`] rows, chosen
//! with `FOR UPDATE SKIP LOCKED`: the pruner never waits for a row a flush holds (no
//! deadlock can form), and a flush waits at most for one batch's rows (only late
//! views of a pruned day touch those at all).
//!
//! # One pruner at a time
//! Every batch first takes `pg_try_advisory_xact_lock(LOCK_CLASS, 0)`; transaction
//! scoped, so the pooled connection never keeps it. Another aggregator's batch in
//! progress makes ours answer [`Batch::Busy`], and that pruner leaves the run to it.
//!
//! # Backfill and the mark
//! A backfill moves totals by (replayed − existing daily rows) of a month; for a
//! month whose rows were pruned it would add their views to the totals again. So
//! `daily_retention.pruned_before` records the first day whose rows are all kept:
//! the pruner raises it in a committed transaction *before* deleting anything older
//! ([`raise_mark`]), and a rebuild reads it with `FOR SHARE` inside its own
//! transaction ([`mark_for_rebuild`]) and refuses a month that starts before it.
//! While a rebuild runs, the mark cannot move, so the pruner cannot delete rows of
//! a month being rebuilt.

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, TransactionTrait, Value,
};

use viewpipe_runtime::sql::stmt;

/// The first key of the pruners' advisory lock, apart from every other user of
/// advisory locks (backfill's are `vpbf`).
pub const LOCK_CLASS: i32 = 0x7670_7274; // "vprt"

/// Most rows one batch deletes.
pub(crate) const BATCH: i64 = 5000;

/// A table the pruner deletes from, as the metric's `table` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    CounterDaily,
    VisitorsDaily,
    Jobs,
    VisitorSalts,
}

impl Table {
    pub(crate) const ALL: [Table; 4] = [
        Table::CounterDaily,
        Table::VisitorsDaily,
        Table::Jobs,
        Table::VisitorSalts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::CounterDaily => "view_counter_daily",
            Table::VisitorsDaily => "view_visitors_daily",
            Table::Jobs => "jobs",
            Table::VisitorSalts => "visitor_salts",
        }
    }
}

/// What one batch deletes: a table and its cutoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `view_counter_daily` rows of days before this one. Pass at most the mark
    /// [`raise_mark`] returned.
    CounterDaily { before: NaiveDate },
    /// `view_visitors_daily` rows of days before this one.
    VisitorsDaily { before: NaiveDate },
    /// Jobs that finished before this moment (but see the module doc).
    Jobs { finished_before: DateTime<Utc> },
    /// Salts of days before this one.
    VisitorSalts { before: NaiveDate },
}

impl Target {
    pub fn table(self) -> Table {
        match self {
            Target::CounterDaily { .. } => Table::CounterDaily,
            Target::VisitorsDaily { .. } => Table::VisitorsDaily,
            Target::Jobs { .. } => Table::Jobs,
            Target::VisitorSalts { .. } => Table::VisitorSalts,
        }
    }

    /// The batch's statement: `$1` the cutoff, `$2` the limit.
    fn sql(self) -> &'static str {
        match self {
            Target::CounterDaily { .. } => {
                "DELETE FROM view_counter_daily WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM view_counter_daily WHERE day < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED))"
            }
            Target::VisitorsDaily { .. } => {
                "DELETE FROM view_visitors_daily WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM view_visitors_daily WHERE day < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED))"
            }
            // The newest completed rebuild of a month and topic stays: it says where
            // the month began in the replay (the same rows `known_starts` reads).
            Target::Jobs { .. } => {
                "DELETE FROM jobs WHERE id = ANY(ARRAY(
                     SELECT j.id FROM jobs j
                     WHERE j.status IN ('completed', 'failed') AND j.finished_at < $1
                       AND NOT (j.kind = 'backfill' AND j.status = 'completed'
                           AND j.result->>'outcome' = 'rebuilt'
                           AND NOT EXISTS (
                               SELECT 1 FROM jobs n
                               WHERE n.kind = 'backfill' AND n.status = 'completed'
                                 AND n.result->>'outcome' = 'rebuilt'
                                 AND n.params->>'month' = j.params->>'month'
                                 AND n.params->>'topic' = j.params->>'topic'
                                 AND n.finished_at > j.finished_at))
                     LIMIT $2 FOR UPDATE OF j SKIP LOCKED))"
            }
            Target::VisitorSalts { .. } => {
                "DELETE FROM visitor_salts WHERE day = ANY(ARRAY(
                     SELECT day FROM visitor_salts WHERE day < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED))"
            }
        }
    }

    fn cutoff(self) -> Value {
        match self {
            Target::CounterDaily { before }
            | Target::VisitorsDaily { before }
            | Target::VisitorSalts { before } => before.into(),
            Target::Jobs { finished_before } => finished_before.into(),
        }
    }
}

/// How a batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// This many rows were deleted (fewer than the limit: nothing more to delete).
    Deleted(u64),
    /// Another pruner holds the lock; nothing was done.
    Busy,
}

#[derive(FromQueryResult)]
struct Locked {
    locked: bool,
}

#[derive(FromQueryResult)]
struct Mark {
    pruned_before: Option<NaiveDate>,
}

/// Short limits of the pruner's own transactions: a batch that has to wait gives
/// up and is tried again next run, rather than holding anything for long.
const BATCH_LIMITS: &str = "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '20s'";

async fn try_lock(txn: &impl ConnectionTrait) -> Result<bool, DbErr> {
    Ok(Locked::find_by_statement(stmt(
        "SELECT pg_try_advisory_xact_lock($1, 0) AS locked",
        vec![LOCK_CLASS.into()],
    ))
    .one(txn)
    .await?
    .is_some_and(|l| l.locked))
}

/// Deletes one batch of `target` (at most `limit` rows), in a transaction of its
/// own under the pruners' lock.
pub async fn delete_batch(
    db: &DatabaseConnection,
    target: Target,
    limit: i64,
) -> Result<Batch, DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared(BATCH_LIMITS).await?;
    if !try_lock(&txn).await? {
        txn.rollback().await?;
        return Ok(Batch::Busy);
    }
    let done = txn
        .execute(stmt(target.sql(), vec![target.cutoff(), limit.into()]))
        .await?;
    txn.commit().await?;
    Ok(Batch::Deleted(done.rows_affected()))
}

/// How [`raise_mark`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raised {
    /// The mark is now this day (at least the one asked for): daily rows before it
    /// may be deleted.
    To(NaiveDate),
    /// A backfill's rebuild holds the mark: it stays where it is (`None`: nothing
    /// pruned yet), and only rows before it may be deleted.
    HeldAt(Option<NaiveDate>),
    /// Another pruner holds the lock.
    Busy,
}

/// Raises `daily_retention.pruned_before` to `before` (never lowers it), committed
/// before any daily row older than it is deleted. Never waits for a rebuild that
/// holds the mark.
pub async fn raise_mark(db: &DatabaseConnection, before: NaiveDate) -> Result<Raised, DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared(BATCH_LIMITS).await?;
    if !try_lock(&txn).await? {
        txn.rollback().await?;
        return Ok(Raised::Busy);
    }
    let raised = Mark::find_by_statement(stmt(
        "WITH free AS (SELECT only_row FROM daily_retention FOR UPDATE SKIP LOCKED)
         UPDATE daily_retention d
         SET pruned_before = GREATEST(d.pruned_before, $1), updated_at = now()
         FROM free WHERE d.only_row = free.only_row
         RETURNING d.pruned_before",
        vec![before.into()],
    ))
    .one(&txn)
    .await?;
    txn.commit().await?;
    match raised {
        Some(Mark {
            pruned_before: Some(day),
        }) => Ok(Raised::To(day)),
        _ => Ok(Raised::HeldAt(pruned_before(db).await?)),
    }
}

/// The first day whose daily rows are all kept (`None`: nothing pruned yet).
pub async fn pruned_before(db: &impl ConnectionTrait) -> Result<Option<NaiveDate>, DbErr> {
    Ok(
        Mark::find_by_statement(stmt("SELECT pruned_before FROM daily_retention", vec![]))
            .one(db)
            .await?
            .and_then(|m| m.pruned_before),
    )
}

/// Inside a rebuild's transaction: the mark, share-locked until the transaction
/// ends, so that the pruner cannot raise it (and delete the month's rows) meanwhile.
pub async fn mark_for_rebuild(txn: &impl ConnectionTrait) -> Result<Option<NaiveDate>, DbErr> {
    Ok(Mark::find_by_statement(stmt(
        "SELECT pruned_before FROM daily_retention FOR SHARE",
        vec![],
    ))
    .one(txn)
    .await?
    .and_then(|m| m.pruned_before))
}

/// Why a month cannot be rebuilt once daily rows of it were pruned, for job rows
/// and the backfill's output.
pub(crate) fn pruned_reason(month_start: NaiveDate, pruned_before: NaiveDate) -> String {
    format!(
        "daily rows before {pruned_before} were deleted by retention (RETAIN_DAILY_DAYS), and the month starts on {month_start}: a rebuild moves totals by the replay minus the daily rows it finds, so it would count the deleted days' views a second time; refusing"
    )
}
