//! The Postgres side of `aggregator backfill`: a month's advisory lock, the month's
//! rebuild in one transaction ([`rebuild_month`]), the month write lock that keeps
//! live flushes of the month out of it ([`lock_months`]), and the month's job row.
//!
//! The month's lock is session-scoped and taken on a connection of its own, so it is
//! released when its worker lets go, fails, or dies (Postgres ends the session with
//! the connection): one worker rebuilds a month at a time. The rebuild replaces the
//! month's daily and visitor rows with the replay's and moves each key's total by the
//! difference, so `total = Σ daily` holds and a rerun changes nothing. A month that
//! starts before the retention mark (daily rows pruned, see [`crate::store::retention`]) is
//! refused inside the rebuild's transaction: its totals would gain the pruned days'
//! views a second time.

mod month_jobs;
mod month_writes;
mod rebuild;

pub(crate) use month_jobs::known_starts;
pub use month_jobs::{create_job, rebuilt_since, update_job};
pub(crate) use month_writes::lock_months;
pub use rebuild::{rebuild_month, RebuildError, Rebuilt};

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, FromQueryResult,
};

use viewpipe_runtime::sql::stmt;

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
    pub(crate) fn lock_key(self) -> i32 {
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
            .sqlx_logging(false)
            // The month's rebuild runs on this session: large statements, no JIT.
            .map_sqlx_postgres_opts(|o| o.options(viewpipe_runtime::db::SESSION_PLANNING));
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
