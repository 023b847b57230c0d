//! The day's salt (`visitor_salts`), shared by every ingest through Postgres.
//!
//! The first ingest that needs a day's salt makes 32 random bytes and inserts them
//! with `ON CONFLICT (day) DO NOTHING`; every ingest then reads back the row that
//! won, so all of them hash with the same salt. The one whose insert created the row
//! deletes the salts older than yesterday: at most two days' salts exist, and a
//! visitor id of an earlier day can no longer be recomputed from an address and a
//! User-Agent.
//!
//! Each ingest keeps the current day's salt in memory, so Postgres is asked once per
//! day. When it cannot answer, views are published without a visitor id: a warning
//! is logged per failed attempt, and no request asks again for [`RETRY_AFTER`], so
//! an outage costs the API no time.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

/// Bytes in a salt.
pub(crate) const SALT_BYTES: usize = 32;
/// How long after a failure the salt is not asked for again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest a request waits for Postgres to give the salt.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// A day's salt. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Salt([u8; SALT_BYTES]);

impl Salt {
    /// A salt from stored bytes; `None` unless there are exactly [`SALT_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Salt)
    }

    pub fn bytes(&self) -> &[u8; SALT_BYTES] {
        &self.0
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(***)")
    }
}

#[derive(Debug, thiserror::Error)]
enum SaltError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error("Postgres did not answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("the stored salt has {0} bytes, not {SALT_BYTES}")]
    Malformed(usize),
    #[error("no salt row after inserting one")]
    Missing,
}

/// The salts of this ingest: the current day's in memory, the rest in Postgres.
pub struct Salts {
    db: DatabaseConnection,
    current: Mutex<Option<(NaiveDate, Salt)>>,
    /// Held by the one request asking Postgres (the others wait for its answer
    /// rather than all asking); holds the instant before which no request asks
    /// again after a failure.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl Salts {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(None),
        }
    }

    fn cached(&self, day: NaiveDate) -> Option<Salt> {
        let current = self.current.lock().ok()?;
        current
            .as_ref()
            .filter(|(d, _)| *d == day)
            .map(|(_, salt)| salt.clone())
    }

    /// The salt of `day`: from memory, else from Postgres (creating it if no ingest
    /// has yet). `None` while Postgres cannot give it (`postgres_down`: the
    /// readiness probe finds it down, so it is not even asked).
    pub(crate) async fn for_day(&self, day: NaiveDate, postgres_down: bool) -> Option<Salt> {
        if let Some(salt) = self.cached(day) {
            return Some(salt);
        }
        if postgres_down {
            return None;
        }
        let mut retry_at = self.fetching.lock().await;
        // Another request may have fetched it while this one waited.
        if let Some(salt) = self.cached(day) {
            return Some(salt);
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch_or_create(&self.db, day))
            .await
            .unwrap_or(Err(SaltError::Timeout));
        match fetched {
            Ok(salt) => {
                *retry_at = None;
                if let Ok(mut current) = self.current.lock() {
                    *current = Some((day, salt.clone()));
                }
                Some(salt)
            }
            Err(e) => {
                *retry_at = Some(Instant::now() + RETRY_AFTER);
                tracing::warn!(
                    error = %e,
                    %day,
                    "no visitor salt: views are published without visitorId until Postgres gives one (next try in {} s)",
                    RETRY_AFTER.as_secs()
                );
                None
            }
        }
    }
}

/// Inserts a fresh salt for `day` unless one exists, then reads back the one
/// stored. The insert that created the row also deletes the salts older than the
/// day before.
async fn fetch_or_create(db: &DatabaseConnection, day: NaiveDate) -> Result<Salt, SaltError> {
    let fresh: [u8; SALT_BYTES] = rand::random();
    let inserted = db
        .execute(stmt(
            "INSERT INTO visitor_salts (day, salt) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING",
            vec![day.into(), fresh.to_vec().into()],
        ))
        .await?;
    if inserted.rows_affected() == 1 {
        if let Some(yesterday) = day.pred_opt() {
            // Not worth failing the view for: the next day's salt deletes these.
            let deleted = db
                .execute(stmt(
                    "DELETE FROM visitor_salts WHERE day < $1",
                    vec![yesterday.into()],
                ))
                .await;
            match deleted {
                Ok(done) => tracing::info!(
                    %day,
                    deleted = done.rows_affected(),
                    "new visitor salt for the day; salts older than yesterday deleted"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    %day,
                    "new visitor salt for the day, but the salts older than yesterday could not be deleted"
                ),
            }
        }
    }
    let row = db
        .query_one(stmt(
            "SELECT salt FROM visitor_salts WHERE day = $1",
            vec![day.into()],
        ))
        .await?
        .ok_or(SaltError::Missing)?;
    let bytes: Vec<u8> = row.try_get("", "salt")?;
    Salt::from_bytes(&bytes).ok_or(SaltError::Malformed(bytes.len()))
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}
