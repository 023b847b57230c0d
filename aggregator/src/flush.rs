//! The flush: moving consumed counts into Postgres, exactly once.
//!
//! # Invariant
//! For every owned partition, Postgres holds exactly the events at offsets below
//! `aggregator_partitions.next_offset`, and nothing else from that partition.
//!
//! # What is written where, in order
//! 1. A batch is consumed. Each key's messages go to Redis in one script call that is
//!    idempotent per partition offset (see `viewpipe_store::pending`), and the counted
//!    ones are added to the partition's in-memory `pending`.
//! 2. The flush writes, in ONE Postgres transaction: the partition rows locked and
//!    their epoch checked, the summed deltas of all flushed partitions added to the
//!    total and daily rows, and each partition's `next_offset` and `flushed_gen`.
//! 3. Only after that commit are the offsets committed to the Kafka group, and the
//!    partition's generation moves on (new pending counts get a new tag in Redis).
//!
//! # A crash at each step
//! - Before or during 2 (no commit): Postgres is unchanged. The next owner claims the
//!   partition, resumes at `next_offset`, re-counts the same events into memory, and
//!   its Redis writes add nothing for offsets already applied.
//! - Between 2 and 3: Postgres has the counts and the new `next_offset`; the Kafka
//!   group offset lags. The next owner seeks to `next_offset` from Postgres (the
//!   authoritative position), and drops any re-delivered message below it.
//! - After 3: nothing to recover.
//!
//! Readers see each flushed generation once: the Redis fields of a generation at or
//! below `flushed_gen` are ignored (see `viewpipe_store::read`).
//!
//! A previous owner that still runs after a rebalance is fenced: its flush finds a
//! newer epoch on the locked partition row and writes nothing, and Redis refuses its
//! writes once the new owner has written the key.
//!
//! # Takeovers
//! A new owner continues the generation its predecessor was writing, so the
//! predecessor's pending Redis counts stay visible while they are re-counted. It
//! flushes a partition only once it has consumed up to the log end seen at the
//! takeover (`Partition::catch_up_to`): flushing earlier would seal a generation whose
//! Redis counts reach further than the flushed ones, and reads would dip.
//!
//! # Redis losing its data
//! Memory, not Redis, is what is flushed, so counts stay exact. Reads are kept from
//! dipping by the live marks: see `crate::upkeep::keep_live` and `docs/exactly-once.md`.
//!
//! # Flush requests
//! `aggregator flush` records a request (`viewpipe_store::jobs`); every flush writes
//! the newest request seen into the flushed partitions' `flush_seq`, idle partitions
//! included, and the request completes when every partition has answered.

use std::collections::BTreeMap;
use std::time::Instant;

use rdkafka::{Offset, TopicPartitionList};
use sea_orm::DatabaseConnection;
use tokio::runtime::Handle;

use viewpipe_store::postgres::{self, FlushError, FlushOutcome, KeyDelta, PartitionCommit, Scope};

use crate::metrics as m;
use crate::state::Core;

/// What a successful flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    pub outcome: FlushOutcome,
    /// Offsets to commit to the Kafka group, now that Postgres holds them.
    pub offsets: Option<TopicPartitionList>,
}

/// What a flush writes for each partition: every owned partition that is caught up
/// and made progress or has not answered flush request `requested` yet.
pub fn commits(core: &Core, requested: i64) -> Vec<PartitionCommit> {
    core.partitions
        .iter()
        .filter(|(_, p)| p.caught_up() && (p.has_progress() || p.flush_seq < requested))
        .map(|(&partition, p)| {
            let (next_offset, gen) = match p.consumed_to {
                Some(to) if p.has_progress() => (to, p.gen),
                // Nothing new: answer the request without sealing a generation.
                _ => (p.flushed_to.unwrap_or(-1), p.gen - 1),
            };
            PartitionCommit {
                partition,
                epoch: p.epoch,
                next_offset,
                gen,
                flush_seq: requested,
            }
        })
        .collect()
}

/// Flushes every owned, caught-up partition that made progress or has not answered
/// flush request `requested` yet. Partitions found fenced are dropped from `core`
/// (their new owner re-consumes them) and the rest retried.
pub fn flush(
    rt: &Handle,
    db: &DatabaseConnection,
    scope: &Scope,
    core: &mut Core,
    requested: i64,
) -> Result<Flushed, sea_orm::DbErr> {
    loop {
        let commits = commits(core, requested);
        if commits.is_empty() {
            return Ok(Flushed::default());
        }
        let mut deltas: BTreeMap<String, KeyDelta> = BTreeMap::new();
        for c in &commits {
            for (key, delta) in &core.partitions[&c.partition].pending {
                match deltas.get_mut(key) {
                    Some(sum) => sum.merge(delta),
                    None => {
                        deltas.insert(key.clone(), delta.clone());
                    }
                }
            }
        }

        let started = Instant::now();
        match rt.block_on(postgres::flush(db, scope, &deltas, &commits)) {
            Ok(outcome) => {
                let mut offsets = TopicPartitionList::new();
                for c in &commits {
                    if let Some(p) = core.partitions.get_mut(&c.partition) {
                        p.flush_seq = p.flush_seq.max(c.flush_seq);
                        if c.gen < p.gen {
                            continue; // answered a request, sealed nothing
                        }
                        p.flushed_to = Some(c.next_offset);
                        p.gen = c.gen + 1;
                        p.pending.clear();
                    }
                    let _ = offsets.add_partition_offset(
                        &scope.topic,
                        c.partition,
                        Offset::Offset(c.next_offset),
                    );
                }
                metrics::histogram!(m::FLUSH_DURATION).record(started.elapsed().as_secs_f64());
                metrics::counter!(m::FLUSHED_ROWS).increment(outcome.rows());
                metrics::gauge!(m::LAST_FLUSH).set(chrono::Utc::now().timestamp() as f64);
                metrics::gauge!(m::PENDING_KEYS).set(core.pending_keys() as f64);
                tracing::debug!(partitions = commits.len(), rows = outcome.rows(), "flushed");
                return Ok(Flushed {
                    outcome,
                    offsets: Some(offsets),
                });
            }
            Err(FlushError::Fenced(fenced)) => {
                tracing::warn!(
                    partitions = ?fenced,
                    "partitions were taken over by another aggregator; dropping their unflushed counts (the new owner re-counts them)"
                );
                for p in fenced {
                    core.partitions.remove(&p);
                }
            }
            Err(FlushError::Db(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Partition;
    use viewpipe_store::Claim;

    fn partition(n: i32, consumed: i64) -> (i32, Partition) {
        let mut p = Partition::from_claim(&Claim {
            partition: n,
            next_offset: Some(10),
            flushed_gen: 2,
            epoch: 7,
        });
        p.consumed_to = Some(consumed);
        (n, p)
    }

    #[test]
    fn only_caught_up_partitions_with_something_to_say_are_flushed() {
        let mut core = Core::default();
        core.partitions
            .extend([partition(0, 15), partition(1, 10), partition(2, 30)]);
        if let Some(p) = core.partitions.get_mut(&2) {
            p.catch_up_to = Some(40); // a predecessor may have counted up to 40
        }
        let periodic = commits(&core, 0);
        assert_eq!(
            periodic,
            vec![PartitionCommit {
                partition: 0,
                epoch: 7,
                next_offset: 15,
                gen: 3,
                flush_seq: 0,
            }]
        );
        // A flush request is answered by idle partitions too, without sealing their
        // generation; the partition still catching up answers later.
        let requested = commits(&core, 5);
        let summary: Vec<(i32, i64, i64, i64)> = requested
            .iter()
            .map(|c| (c.partition, c.next_offset, c.gen, c.flush_seq))
            .collect();
        assert_eq!(summary, vec![(0, 15, 3, 5), (1, 10, 2, 5)]);
    }
}
