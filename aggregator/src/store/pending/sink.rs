//! Where pending counts go between flushes: Redis, or nowhere (database-only mode).

use super::{Applied, Owner, PartitionBatch, PendingStore, TakeOver};

/// The aggregator's pending store.
#[derive(Clone)]
pub enum Pending {
    Redis(Box<PendingStore>),
    /// `REDIS_URL=none`: counts live in memory until the flush after each batch.
    DatabaseOnly,
}

impl Pending {
    pub(crate) fn is_redis(&self) -> bool {
        matches!(self, Pending::Redis(_))
    }

    /// Fences a partition for its new owner; returns how far Redis holds the
    /// generation the owner continues (-1 for nothing), and whether Redis lost the
    /// partition's counts since it was last marked live (see
    /// `PendingStore::take_over_vouched`).
    pub async fn take_over(
        &self,
        partition: i32,
        owner: Owner,
        gen: i64,
    ) -> redis::RedisResult<(TakeOver, bool)> {
        match self {
            Pending::Redis(store) => store.take_over_vouched(partition, owner, gen).await,
            Pending::DatabaseOnly => Ok((TakeOver::Applied(-1), false)),
        }
    }

    /// How far Redis holds generation `gen` of `partition` or the one after it, read
    /// only (-1: neither; always -1 without Redis).
    pub async fn extent(&self, partition: i32, gen: i64) -> redis::RedisResult<i64> {
        match self {
            Pending::Redis(store) => store.extent(partition, gen).await,
            Pending::DatabaseOnly => Ok(-1),
        }
    }

    pub async fn apply(&self, batches: &[PartitionBatch]) -> redis::RedisResult<Vec<Applied>> {
        match self {
            Pending::Redis(store) => store.apply(batches).await,
            Pending::DatabaseOnly => Ok(vec![Applied::Added { live: true }; batches.len()]),
        }
    }

    pub async fn restore(
        &self,
        partition: i32,
        owner: Owner,
        gen: i64,
        last: i64,
        live: bool,
        fields: &[(String, i64)],
    ) -> redis::RedisResult<Applied> {
        match self {
            Pending::Redis(store) => {
                store
                    .restore(partition, owner, gen, last, live, fields)
                    .await
            }
            Pending::DatabaseOnly => Ok(Applied::Added { live: true }),
        }
    }

    /// Drops a flushed generation from Redis (best effort: it also expires).
    pub(crate) async fn drop_generation(&self, partition: i32, gen: i64) {
        if let Pending::Redis(store) = self {
            if let Err(e) = store.drop_generation(partition, gen).await {
                tracing::debug!(partition, gen, error = %e, "cannot drop a flushed generation (it expires)");
            }
        }
    }

    pub async fn marks(
        &self,
        partitions: &[(i32, i64)],
    ) -> redis::RedisResult<Vec<(Option<i64>, Option<i64>)>> {
        match self {
            Pending::Redis(store) => store.marks(partitions).await,
            Pending::DatabaseOnly => Ok(vec![(None, None); partitions.len()]),
        }
    }
}
