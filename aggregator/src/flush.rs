//! The flush: moving consumed counts into Postgres, exactly once.
//!
//! # Invariant
//! For every owned partition, Postgres holds exactly the events at offsets below
//! `aggregator_partitions.next_offset`, and nothing else from that partition.
//!
//! # What is written where, in order
//! 1. A batch is consumed and summed per key in memory. Its sums go to Redis in one
//!    script call per partition, a compare-and-set on the offset Redis holds for the
//!    partition's generation (see `crate::store::pending`), so a batch is added to
//!    Redis once however often it is sent; then they are added to the partition's
//!    in-memory generation.
//! 2. A flush *seals* the current generation of every caught-up partition with
//!    progress (memory moves on to the next generation, Redis to the next hash) and
//!    writes, in ONE Postgres transaction, in the background while consuming goes on:
//!    the partition rows locked and their epoch and position checked, the sealed
//!    counts added to the total and daily rows, their visitor sketches merged into
//!    the visitor rows (a merge is idempotent: merging the same visitors again adds
//!    no one), and each partition's `next_offset` and `flushed_gen` moved to the end
//!    of the sealed generation.
//! 3. Only after that commit are the offsets committed to the Kafka group and the
//!    sealed generation dropped from Redis. At most one flush is in flight, so at most
//!    two generations of a partition are unflushed at any time.
//!
//! # A crash, a lost reply or an error at each step
//! - Before or during 2 (no commit): Postgres is unchanged. The next owner claims the
//!   partition, resumes at `next_offset`, re-counts the same events into memory, and
//!   learns from Redis how far its predecessor got, so it adds nothing twice there.
//! - A commit whose reply is lost: the flush is sent again as it was; Postgres finds
//!   its own generation and offset written and writes nothing (`already_committed`).
//! - A failed flush is retried as it was, with backoff, while counting goes on in the
//!   next generation.
//! - Between 2 and 3: Postgres has the counts and the new `next_offset`; the Kafka
//!   group offset lags. The next owner seeks to `next_offset` from Postgres (the
//!   authoritative position), and drops any re-delivered message below it.
//! - After 3: nothing to recover.
//!
//! Readers see each flushed generation once: Redis hashes of a generation at or below
//! `flushed_gen` are ignored (see the ingest's `read` module).
//!
//! A previous owner that still runs after a rebalance is fenced: its flush finds a
//! newer epoch on the locked partition row and writes nothing, and Redis refuses its
//! writes once the new owner has fenced the partition.
//!
//! # Takeovers
//! A new owner continues the generation Postgres expects next; if its predecessor had
//! already sealed that one and started the next, Redis folds the two into one (reads
//! see the same sum). Redis answers how far that generation reaches; the new owner
//! re-counts up to there in memory only (`Partition::replay_to`) and flushes the
//! partition only once it has passed it: flushing earlier would seal a generation
//! whose Redis counts reach further than the flushed ones, and reads would dip.
//!
//! # Redis losing its data
//! Memory, not Redis, is what is flushed, so counts stay exact. Reads are kept from
//! dipping by the live marks: see `Aggregator::upkeep` and `docs/exactly-once.md`.
//!
//! # Flush requests
//! `aggregator flush` records a request (`viewpipe_runtime::jobs`); every flush writes
//! the newest request seen into the flushed partitions' `flush_seq`, idle partitions
//! included, and the request completes when every partition has answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::store::{Counts, LogMarks, PartitionCommit};

use crate::partition::{Partition, Sealed};

/// What one flush writes: a commit per partition, with the sealed counts of those
/// that seal a generation.
#[derive(Clone, Debug, Default)]
pub struct FlushUnit {
    pub parts: Vec<FlushPart>,
}

#[derive(Clone, Debug)]
pub struct FlushPart {
    pub commit: PartitionCommit,
    /// The sealed generation's counts (`None` for a commit that only answers a flush
    /// request).
    pub counts: Option<Arc<Counts>>,
}

impl FlushUnit {
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The commits that seal a generation.
    pub(crate) fn sealing(&self) -> impl Iterator<Item = &PartitionCommit> {
        self.parts.iter().map(|p| &p.commit).filter(|c| c.seals)
    }

    /// Leaves out the partitions this aggregator no longer owns.
    pub(crate) fn retain_partitions(&mut self, owned: impl Fn(i32) -> bool) {
        self.parts.retain(|p| owned(p.commit.partition));
    }
}

/// Seals the current generation of every caught-up partition with progress, and
/// answers flush request `requested` for the caught-up ones without; the partitions
/// move on to their next generation. Partitions still catching up are left alone.
pub(crate) fn seal(partitions: &mut BTreeMap<i32, Partition>, requested: i64) -> FlushUnit {
    let mut unit = FlushUnit::default();
    for (&partition, p) in partitions.iter_mut() {
        if !p.caught_up() || p.sealed.is_some() {
            continue;
        }
        if p.has_progress() {
            let next_offset = p.consumed_to.unwrap_or(0);
            let counts = Arc::new(std::mem::take(&mut p.current));
            unit.parts.push(FlushPart {
                commit: PartitionCommit {
                    partition,
                    epoch: p.epoch,
                    next_offset,
                    gen: p.gen,
                    seals: true,
                    flush_seq: requested,
                    marks: p.marks,
                    event_clock: p.event_clock,
                },
                counts: Some(counts.clone()),
            });
            p.sealed = Some(Sealed {
                gen: p.gen,
                next_offset,
                counts,
            });
            p.gen += 1;
            p.redis_at = -1;
        } else if p.flush_seq < requested {
            unit.parts.push(FlushPart {
                commit: PartitionCommit {
                    partition,
                    epoch: p.epoch,
                    next_offset: p.flushed_to.unwrap_or(-1),
                    gen: p.gen - 1,
                    seals: false,
                    flush_seq: requested,
                    marks: LogMarks::default(),
                    event_clock: None,
                },
                counts: None,
            });
        }
    }
    unit
}

/// Records in the partitions that `unit` is in Postgres.
pub fn flushed(partitions: &mut BTreeMap<i32, Partition>, unit: &FlushUnit) {
    for c in unit.parts.iter().map(|p| &p.commit) {
        let Some(p) = partitions.get_mut(&c.partition) else {
            continue;
        };
        p.flush_seq = p.flush_seq.max(c.flush_seq);
        if c.seals && p.sealed.as_ref().is_some_and(|s| s.gen == c.gen) {
            p.sealed = None;
            p.flushed_to = Some(c.next_offset);
        }
    }
}

/// True when a caught-up partition has not answered flush request `requested`.
pub(crate) fn answers_pending(partitions: &BTreeMap<i32, Partition>, requested: i64) -> bool {
    partitions
        .values()
        .any(|p| p.caught_up() && p.flush_seq < requested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Claim;
    use chrono::NaiveDate;

    fn partition(n: i32, consumed: i64) -> (i32, Partition) {
        let mut p = Partition::from_claim(
            &Claim {
                partition: n,
                next_offset: Some(10),
                flushed_gen: 2,
                epoch: 7,
                ..Claim::default()
            },
            Some(-1),
        );
        p.consumed(consumed - 1, 1, None);
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).expect("date");
        for _ in 10..consumed {
            p.current.add("resource:a", day, None);
        }
        (n, p)
    }

    #[test]
    fn only_caught_up_partitions_with_something_to_say_are_flushed() {
        let mut partitions: BTreeMap<i32, Partition> =
            [partition(0, 15), partition(1, 10), partition(2, 30)]
                .into_iter()
                .collect();
        if let Some(p) = partitions.get_mut(&2) {
            p.replay_to = Some(40); // a predecessor counted up to 40 in Redis
        }
        let unit = seal(&mut partitions, 0);
        let summary: Vec<(i32, i64, i64, bool)> = unit
            .parts
            .iter()
            .map(|p| {
                (
                    p.commit.partition,
                    p.commit.next_offset,
                    p.commit.gen,
                    p.commit.seals,
                )
            })
            .collect();
        assert_eq!(summary, vec![(0, 15, 3, true)]);
        assert_eq!(unit.parts[0].counts.as_ref().map(|c| c.views()), Some(5));
        assert_eq!(
            partitions[&0].gen, 4,
            "counting moved on to the next generation"
        );
        assert!(partitions[&0].current.is_empty());
        // While the flush is in flight nothing else is sealed; a flush request is
        // answered by idle partitions without sealing.
        let request = seal(&mut partitions, 5);
        let summary: Vec<(i32, bool)> = request
            .parts
            .iter()
            .map(|p| (p.commit.partition, p.commit.seals))
            .collect();
        assert_eq!(summary, vec![(1, false)]);

        flushed(&mut partitions, &unit);
        assert_eq!(partitions[&0].flushed_to, Some(15));
        assert!(partitions[&0].sealed.is_none());
        assert!(!partitions[&0].has_progress());
        flushed(&mut partitions, &request);
        assert!(
            answers_pending(&partitions, 5),
            "partition 0 has not answered request 5"
        );
    }
}
