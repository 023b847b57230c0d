//! Reads that merge Postgres with the pending counts in Redis.
//!
//! Redis is read first, Postgres second. A pending generation counts only if
//! Postgres (in that later snapshot) has not flushed it yet, so a flush that
//! commits between the two reads is seen exactly once, through Postgres; and since
//! both reads only move forward, successive reads never decrease while only views
//! are added.

use sea_orm::DatabaseConnection;

use viewpipe_schema::ContentKey;

use crate::pending::{PendingFields, PendingStore};
use crate::postgres::{self, Scope};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Postgres: {0}")]
    Db(#[from] sea_orm::DbErr),
}

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
        let fields = self.pending_fields(key).await?;
        let (flushed, gens) = postgres::total_and_gens(&self.db, &self.scope, key.as_str()).await?;
        Ok(flushed + unflushed(&fields.totals, &gens))
    }

    async fn pending_fields(&self, key: &ContentKey) -> Result<PendingFields, ReadError> {
        let Some(pending) = &self.pending else {
            return Ok(PendingFields::default());
        };
        let mut conn = pending.connection();
        let fields: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(pending.layout().counts(key.as_str()))
            .query_async(&mut conn)
            .await?;
        Ok(PendingFields::parse(fields))
    }
}

/// Sums pending `(partition, gen, count)` entries that Postgres has not flushed.
pub fn unflushed(totals: &[(i32, i64, i64)], flushed_gens: &[(i32, i64)]) -> i64 {
    totals
        .iter()
        .filter(|(p, g, _)| {
            let flushed = flushed_gens
                .iter()
                .find(|(fp, _)| fp == p)
                .map_or(0, |(_, fg)| *fg);
            *g > flushed
        })
        .map(|(_, _, n)| n)
        .sum()
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
