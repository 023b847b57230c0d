//! The Postgres side of `aggregator backfill`: a month's advisory lock, the month's
//! rebuild in one transaction, and the month's job row.
//!
//! The lock is session-scoped and taken on a connection of its own, so it is
//! released when its worker lets go, fails, or dies (Postgres ends the session with
//! the connection). The rebuild replaces the month's daily rows and moves each key's
//! total by the difference, so `total = Σ daily` holds and a rerun changes nothing.
//! It replaces the month's visitor rows with the replay's sketches too.
//! A month that starts before the retention mark (daily rows pruned, see
//! [`crate::retention`]) is refused inside the rebuild's transaction: its totals
//! would gain the pruned days' views a second time.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, FromQueryResult,
    TransactionTrait,
};
use uuid::Uuid;

use crate::counts::Counts;
use crate::entities::JobStatus;
use crate::postgres::{add_counts, FlushOutcome};
use crate::retention;
use crate::sql::stmt;

/// The first key of every backfill lock (`pg_advisory_lock(LOCK_CLASS, month)`), so
/// that they cannot collide with other users of advisory locks.
pub const LOCK_CLASS: i32 = 0x7670_6266; // "vpbf"

/// How often a worker asks again for a month someone else holds.
const LOCK_POLL: Duration = Duration::from_millis(100);

#[derive(FromQueryResult)]
struct Locked {
    locked: bool,
}

/// A row of [`held_locks`]' query.
#[derive(FromQueryResult)]
struct LockRow {
    lock_key: i64,
    pid: i32,
    application: String,
    client: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a month's rebuild deleted of one key.
#[derive(FromQueryResult)]
struct Removed {
    key: String,
    views: i64,
    daily_rows: i64,
}

#[derive(FromQueryResult)]
struct JobId {
    id: Uuid,
}

#[derive(FromQueryResult)]
struct FirstOffsets {
    first_offsets: Option<serde_json::Value>,
}

/// A calendar month, `YYYY-MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    pub fn of(day: NaiveDate) -> Self {
        Self {
            first: day.with_day(1).unwrap_or(day),
        }
    }

    /// Its first day.
    pub fn first_day(self) -> NaiveDate {
        self.first
    }

    pub fn next(self) -> Self {
        let (y, m) = (self.first.year(), self.first.month());
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        Self {
            first: NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(self.first),
        }
    }

    /// The second key of its lock: `YYYYMM`.
    pub fn lock_key(self) -> i32 {
        self.first.year() * 100 + self.first.month() as i32
    }

    fn from_lock_key(key: i64) -> Option<Self> {
        let day = NaiveDate::from_ymd_opt((key / 100) as i32, (key % 100) as u32, 1)?;
        Some(Self::of(day))
    }

    /// Every month from `self` to `to`, both included.
    pub fn through(self, to: Month) -> Vec<Month> {
        let mut months = Vec::new();
        let mut m = self;
        while m <= to {
            months.push(m);
            m = m.next();
        }
        months
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.first.year(), self.first.month())
    }
}

impl FromStr for Month {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a month: expected YYYY-MM, e.g. 2026-01");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        NaiveDate::from_ymd_opt(y, m, 1)
            .map(Self::of)
            .ok_or_else(bad)
    }
}

/// A month's lock, held by a session of its own until [`MonthLock::release`] (or
/// until the process or its connection dies).
pub struct MonthLock {
    db: DatabaseConnection,
    month: Month,
}

impl MonthLock {
    /// Tries for `month`'s lock on a new connection to `url`, for up to `wait`.
    /// `None`: someone else held it all that time.
    pub async fn acquire(url: &str, month: Month, wait: Duration) -> Result<Option<Self>, DbErr> {
        let mut opts = ConnectOptions::new(url);
        // Not `viewpipe_runtime::db::connect`: the pool's one connection *is* the lock,
        // so it must never be retired for age or idleness while held.
        opts.max_connections(1)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(600))
            .max_lifetime(Duration::from_secs(7 * 24 * 3600))
            .idle_timeout(Duration::from_secs(7 * 24 * 3600))
            .sqlx_logging(false);
        let db = Database::connect(opts).await?;
        let deadline = Instant::now() + wait;
        loop {
            let got = Locked::find_by_statement(stmt(
                "SELECT pg_try_advisory_lock($1, $2) AS locked",
                vec![LOCK_CLASS.into(), month.lock_key().into()],
            ))
            .one(&db)
            .await?
            .is_some_and(|r| r.locked);
            if got {
                return Ok(Some(Self { db, month }));
            }
            if Instant::now() >= deadline {
                db.close().await?;
                return Ok(None);
            }
            tokio::time::sleep(LOCK_POLL.min(deadline - Instant::now())).await;
        }
    }

    /// The session holding the lock: the month's rebuild runs on it.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn month(&self) -> Month {
        self.month
    }

    /// Lets the lock go and closes the session.
    pub async fn release(self) -> Result<(), DbErr> {
        let unlocked = self
            .db
            .execute(stmt(
                "SELECT pg_advisory_unlock($1, $2)",
                vec![LOCK_CLASS.into(), self.month.lock_key().into()],
            ))
            .await;
        // Closing the session releases the lock also when the unlock failed.
        self.db.close().await?;
        unlocked.map(|_| ())
    }
}

/// Runs `work` while holding `month`'s lock, and releases it whatever `work` returns.
/// `Ok(None)`: the month stayed locked by someone else for `wait`.
pub async fn with_month_lock<T, E, F>(
    url: &str,
    month: Month,
    wait: Duration,
    work: impl FnOnce(&DatabaseConnection) -> F,
) -> Result<Option<Result<T, E>>, DbErr>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let Some(lock) = MonthLock::acquire(url, month, wait).await? else {
        return Ok(None);
    };
    let outcome = work(lock.db()).await;
    lock.release().await?;
    Ok(Some(outcome))
}

/// A backfill lock someone holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub month: Month,
    /// The holding backend's process id, its application and client address.
    pub pid: i32,
    pub application: String,
    pub client: Option<String>,
    /// When the holder's session started.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// The months whose backfill locks are held, and by which backend.
pub async fn held_locks(db: &impl ConnectionTrait) -> Result<Vec<HeldLock>, DbErr> {
    let rows = LockRow::find_by_statement(stmt(
        "SELECT l.objid::int8 AS lock_key, l.pid, COALESCE(a.application_name, '') AS application,
                host(a.client_addr) AS client, a.backend_start AS since
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.classid = $1::int8::oid
         ORDER BY l.objid",
        vec![i64::from(LOCK_CLASS).into()],
    ))
    .all(db)
    .await?;
    let mut held = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(month) = Month::from_lock_key(row.lock_key) else {
            continue;
        };
        held.push(HeldLock {
            month,
            pid: row.pid,
            application: row.application,
            client: row.client,
            since: row.since,
        });
    }
    Ok(held)
}

/// True while someone holds `month`'s lock.
pub async fn is_locked(db: &impl ConnectionTrait, month: Month) -> Result<bool, DbErr> {
    Ok(held_locks(db).await?.iter().any(|l| l.month == month))
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

/// Replaces `month`'s daily rows with `counts` (views of that month only), moves
/// each key's total by the difference and replaces the month's visitor rows with the
/// sketches in `counts`, in one transaction on `db`. Deadlocks with live flushes are
/// retried. A month retention pruned rows of is refused ([`RebuildError::Pruned`]).
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
    // A large month takes longer than the live services' limits allow.
    txn.execute_unprepared("SET LOCAL statement_timeout = '15min'; SET LOCAL lock_timeout = '60s'")
        .await?;
    // First, and share-locked to the commit: the pruner cannot delete rows of this
    // month while we rebuild it, nor can we rebuild a month it has begun to prune.
    if let Some(pruned_before) = retention::mark_for_rebuild(&txn).await? {
        if month.first_day() < pruned_before {
            txn.rollback().await?;
            return Err(RebuildError::Pruned {
                month_start: month.first_day(),
                pruned_before,
            });
        }
    }
    // What the month held, as it is deleted: also rows a live flush wrote a moment ago.
    let removed = Removed::find_by_statement(stmt(
        "WITH gone AS (
             DELETE FROM view_counter_daily WHERE day >= $1 AND day < $2
             RETURNING key, count)
         SELECT key, sum(count)::int8 AS views, count(*)::int8 AS daily_rows
         FROM gone GROUP BY key ORDER BY key",
        vec![month.first_day().into(), month.next().first_day().into()],
    ))
    .all(&txn)
    .await?;
    let mut outcome = Rebuilt::default();
    let mut lowered: BTreeMap<String, i64> = BTreeMap::new();
    for Removed {
        key,
        views,
        daily_rows,
    } in removed
    {
        outcome.rows_removed += daily_rows as u64;
        outcome.views_removed += views;
        lowered.insert(key, views);
    }
    // Lower the totals by what was removed, in key order like the flushes.
    let (keys, views): (Vec<String>, Vec<i64>) = lowered.into_iter().unzip();
    txn.execute(stmt(
        "UPDATE view_counter_total AS t SET total = t.total - g.views, updated_at = now()
         FROM unnest($1::text[], $2::int8[]) AS g(key, views)
         WHERE t.key = g.key",
        vec![keys.into(), views.into()],
    ))
    .await?;
    // Then add the month as the replay has it (daily rows and totals).
    let FlushOutcome { daily_rows, .. } = add_counts(&txn, &[counts]).await?;
    outcome.rows_written = daily_rows;
    outcome.views_written = counts.views();
    let (removed, written) = crate::visitors::rows::replace_days(
        &txn,
        month.first_day(),
        month.next().first_day(),
        counts,
    )
    .await?;
    outcome.visitor_rows_removed = removed;
    outcome.visitor_rows_written = written;
    update_job(&txn, job, JobStatus::Completed, result(&outcome), None).await?;
    txn.commit().await?;
    Ok(outcome)
}

/// Creates a month's job row (kind `backfill`, status `queued`).
pub async fn create_job(
    db: &impl ConnectionTrait,
    month: Month,
    topic: &str,
) -> Result<Uuid, DbErr> {
    let created = JobId::find_by_statement(stmt(
        "INSERT INTO jobs (kind, status, params)
         VALUES ('backfill', 'queued', jsonb_build_object('month', $1::text, 'topic', $2::text))
         RETURNING id",
        vec![month.to_string().into(), topic.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
    Ok(created.id)
}

/// Records a job's state: `running` with progress, or its outcome
/// (`completed`/`failed`, which also sets `finished_at`).
pub async fn update_job(
    db: &impl ConnectionTrait,
    id: Uuid,
    status: JobStatus,
    result: serde_json::Value,
    error: Option<&str>,
) -> Result<(), DbErr> {
    db.execute(stmt(
        "UPDATE jobs SET status = $2, result = $3, error = $4,
             finished_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END
         WHERE id = $1",
        vec![
            id.into(),
            status.as_str().into(),
            result.into(),
            error.map(str::to_owned).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Another rebuild of `month` that completed after job `ours` was created: the month
/// was rebuilt meanwhile, by a run that read the replay at least as late as ours.
pub async fn rebuilt_since(
    db: &impl ConnectionTrait,
    month: Month,
    ours: Uuid,
) -> Result<Option<Uuid>, DbErr> {
    let newer = JobId::find_by_statement(stmt(
        "SELECT j.id FROM jobs j, jobs o
         WHERE o.id = $2 AND j.kind = 'backfill' AND j.id <> o.id
           AND j.params->>'month' = $1 AND j.status = 'completed'
           AND j.result->>'outcome' = 'rebuilt' AND j.finished_at > o.created_at
         ORDER BY j.finished_at DESC LIMIT 1",
        vec![month.to_string().into(), ours.into()],
    ))
    .one(db)
    .await?;
    Ok(newer.map(|j| j.id))
}

/// Where the month's events began in each partition of `topic`, as the newest
/// completed rebuild of it found (`result.firstOffsets`: partition → offset).
pub async fn known_starts(
    db: &impl ConnectionTrait,
    month: Month,
    topic: &str,
) -> Result<Option<BTreeMap<i32, i64>>, DbErr> {
    let row = FirstOffsets::find_by_statement(stmt(
        "SELECT result->'firstOffsets' AS first_offsets FROM jobs
         WHERE kind = 'backfill' AND status = 'completed' AND params->>'month' = $1
           AND params->>'topic' = $2 AND result->>'outcome' = 'rebuilt'
           AND result ? 'firstOffsets'
         ORDER BY finished_at DESC LIMIT 1",
        vec![month.to_string().into(), topic.into()],
    ))
    .one(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let starts = row
        .first_offsets
        .and_then(|v| serde_json::from_value::<BTreeMap<String, i64>>(v).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(p, o)| p.parse().ok().map(|p| (p, o)))
                .collect()
        });
    Ok(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_print_and_step() {
        let jan: Month = "2026-01".parse().expect("month");
        assert_eq!(jan.to_string(), "2026-01");
        assert_eq!(jan.lock_key(), 202_601);
        let dec: Month = "2025-12".parse().expect("month");
        assert_eq!(dec.next(), jan);
        assert_eq!(dec.through(jan), vec![dec, jan]);
        assert_eq!(Month::from_lock_key(202_601), Some(jan));
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "january"] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }
}
