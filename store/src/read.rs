//! Reads that merge Postgres with the pending counts in Redis.
//!
//! Redis is read first, Postgres second. A pending generation counts only if
//! Postgres (in that later snapshot) has not flushed it yet, so a flush that
//! commits between the two reads is seen exactly once, through Postgres; and since
//! both reads only move forward, successive reads never decrease while only views
//! are added.
//!
//! Redis losing its data would make pending counts vanish until their owner restores
//! them. The `live` marks (see [`crate::pending`]) are read in the same atomic step as
//! the key's hash; while any partition Postgres knows of is not marked, the read waits
//! for its owner to restore it, and answers [`ReadError::Recovering`] after
//! [`RECOVERY_WAIT`] rather than a count that went down.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use sea_orm::DatabaseConnection;

use viewpipe_schema::ContentKey;

use crate::pending::{PendingFields, PendingStore};
use crate::postgres::{self, Scope, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Postgres: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("Redis lost pending counts of partitions {0:?}; their aggregators are restoring them")]
    Recovering(Vec<i32>),
}

/// How long a read waits for lost pending counts to be restored.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(2);
const RECOVERY_POLL: Duration = Duration::from_millis(20);

/// Reads counts for the HTTP API.
#[derive(Clone)]
pub struct Reader {
    db: DatabaseConnection,
    scope: Scope,
    pending: Option<PendingStore>,
}

impl Reader {
    pub fn new(db: DatabaseConnection, scope: Scope, pending: Option<PendingStore>) -> Self {
        Self { db, scope, pending }
    }

    /// Every view of `key` the aggregators have consumed.
    pub async fn total(&self, key: &ContentKey) -> Result<i64, ReadError> {
        self.total_within(key, RECOVERY_WAIT).await
    }

    /// Like [`Reader::total`], waiting at most `wait` for lost counts to be restored.
    pub async fn total_within(&self, key: &ContentKey, wait: Duration) -> Result<i64, ReadError> {
        let (fields, snap) = self.merged(key, None, wait).await?;
        Ok(snap.total + unflushed(&fields.totals, &snap.gens))
    }

    /// The key's views per UTC day over `from..=to`, ascending, zero-filled, pending
    /// counts included.
    pub async fn daily(
        &self,
        key: &ContentKey,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, i64)>, ReadError> {
        let (fields, snap) = self.merged(key, Some((from, to)), RECOVERY_WAIT).await?;
        let mut days: BTreeMap<NaiveDate, i64> = from
            .iter_days()
            .take_while(|d| *d <= to)
            .map(|d| (d, 0))
            .collect();
        for (day, n) in &snap.days {
            if let Some(slot) = days.get_mut(day) {
                *slot += n;
            }
        }
        for (p, gen, day, n) in &fields.days {
            if *gen > flushed_gen(&snap.gens, *p) {
                if let Some(slot) = days.get_mut(day) {
                    *slot += n;
                }
            }
        }
        Ok(days.into_iter().collect())
    }

    /// The key's pending fields and the Postgres snapshot taken after them, once every
    /// partition Postgres knows of is marked live (or `wait` passed).
    async fn merged(
        &self,
        key: &ContentKey,
        days: Option<(NaiveDate, NaiveDate)>,
        wait: Duration,
    ) -> Result<(PendingFields, Snapshot), ReadError> {
        let deadline = Instant::now() + wait;
        loop {
            let (live, fields) = self.pending_fields(key).await?;
            let snap = postgres::snapshot(&self.db, &self.scope, key.as_str(), days).await?;
            let unmarked: Vec<i32> = match &live {
                Some(live) => snap
                    .gens
                    .iter()
                    .map(|(p, _)| *p)
                    .filter(|p| !live.contains_key(p))
                    .collect(),
                None => Vec::new(),
            };
            if unmarked.is_empty() {
                return Ok((fields, snap));
            }
            if Instant::now() >= deadline {
                return Err(ReadError::Recovering(unmarked));
            }
            tokio::time::sleep(RECOVERY_POLL).await;
        }
    }

    /// The live marks (`None` in database-only mode) and the key's pending fields,
    /// read atomically.
    async fn pending_fields(
        &self,
        key: &ContentKey,
    ) -> Result<(Option<HashMap<i32, i64>>, PendingFields), ReadError> {
        let Some(pending) = &self.pending else {
            return Ok((None, PendingFields::default()));
        };
        let mut conn = pending.connection();
        let (live, fields): (HashMap<i32, i64>, Vec<(String, i64)>) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(pending.layout().live())
            .cmd("HGETALL")
            .arg(pending.layout().counts(key.as_str()))
            .query_async(&mut conn)
            .await?;
        Ok((Some(live), PendingFields::parse(fields)))
    }
}

/// Sums pending `(partition, gen, count)` entries that Postgres has not flushed.
pub fn unflushed(totals: &[(i32, i64, i64)], flushed_gens: &[(i32, i64)]) -> i64 {
    totals
        .iter()
        .filter(|(p, g, _)| *g > flushed_gen(flushed_gens, *p))
        .map(|(_, _, n)| n)
        .sum()
}

/// A partition's `flushed_gen` (0 when Postgres has no row for it).
fn flushed_gen(flushed_gens: &[(i32, i64)], partition: i32) -> i64 {
    flushed_gens
        .iter()
        .find(|(p, _)| *p == partition)
        .map_or(0, |(_, g)| *g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unflushed_generations_count() {
        let totals = [(0, 1, 10), (0, 2, 3), (1, 5, 7), (2, 1, 4)];
        let gens = [(0, 1), (1, 5)];
        // partition 0 gen 1 and partition 1 gen 5 are flushed; partition 2 has no row.
        assert_eq!(unflushed(&totals, &gens), 3 + 4);
    }
}
