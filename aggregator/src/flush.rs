//! The flush unit: what one flush writes to Postgres, built from the partitions'
//! sealed generations. The protocol it follows, its invariant and the argument for
//! it are at the head of [`crate::protocol`]; `docs/exactly-once.md` is the long form.
//!
//! # Flush requests
//! `aggregator flush` records a request (`viewpipe_runtime::jobs`); every flush writes
//! the newest request seen into the flushed partitions' `flush_seq`, idle partitions
//! included, and the request completes when every partition has answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::store::{Counts, LogMarks, PartitionCommit};

use crate::partition::Partition;

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

/// Seals the current generation of every flushable partition with progress, and
/// answers flush request `requested` for the flushable ones without; the partitions
/// move on to their next generation. Partitions not flushable (see
/// [`crate::protocol::Core::flushable`]) are left alone.
pub(crate) fn seal(partitions: &mut BTreeMap<i32, Partition>, requested: i64) -> FlushUnit {
    let mut unit = FlushUnit::default();
    for (&partition, p) in partitions.iter_mut() {
        if !p.core.flushable() {
            continue;
        }
        if let Some(seal) = p.core.seal() {
            unit.parts.push(FlushPart {
                commit: PartitionCommit {
                    partition,
                    epoch: p.core.epoch(),
                    next_offset: seal.next_offset,
                    extends: Some(seal.from.unwrap_or(-1)),
                    gen: seal.gen,
                    seals: true,
                    flush_seq: requested,
                    marks: p.marks,
                    event_clock: p.event_clock,
                },
                counts: Some(seal.counts),
            });
        } else if p.core.flush_seq() < requested {
            unit.parts.push(FlushPart {
                commit: PartitionCommit {
                    partition,
                    epoch: p.core.epoch(),
                    next_offset: p.core.flushed_to().unwrap_or(-1),
                    extends: None,
                    gen: p.core.gen() - 1,
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
        if let Some(p) = partitions.get_mut(&c.partition) {
            let sealed = c.seals.then_some(c.gen);
            p.core.flushed(sealed, c.next_offset, c.flush_seq);
        }
    }
}

/// True when a flushable partition has not answered flush request `requested`.
pub(crate) fn answers_pending(partitions: &BTreeMap<i32, Partition>, requested: i64) -> bool {
    partitions
        .values()
        .any(|p| p.core.flushable() && p.core.flush_seq() < requested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Fence;
    use crate::store::{Claim, Counts};
    use chrono::NaiveDate;

    fn partition(n: i32, consumed: i64, redis_at: i64) -> (i32, Partition) {
        let mut p = Partition::from_claim(
            &Claim {
                partition: n,
                next_offset: Some(10),
                flushed_gen: 2,
                epoch: 7,
                ..Claim::default()
            },
            Fence::Done(redis_at),
        );
        p.consumed(consumed - 1, 1, None);
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).expect("date");
        let mut counts = Counts::default();
        for _ in 10..consumed {
            counts.add("resource:a", day, None);
        }
        p.core.count(counts);
        (n, p)
    }

    #[test]
    fn only_caught_up_partitions_with_something_to_say_are_flushed() {
        let mut partitions: BTreeMap<i32, Partition> =
            // A predecessor counted partition 2 up to 40 in Redis.
            [partition(0, 15, -1), partition(1, 10, -1), partition(2, 30, 40)]
                .into_iter()
                .collect();
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
            partitions[&0].core.gen(),
            4,
            "counting moved on to the next generation"
        );
        assert_eq!(partitions[&0].core.current().views(), 0);
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
        assert_eq!(partitions[&0].core.flushed_to(), Some(15));
        assert!(partitions[&0].core.sealed().is_none());
        assert!(!partitions[&0].core.has_progress());
        flushed(&mut partitions, &request);
        assert!(
            answers_pending(&partitions, 5),
            "partition 0 has not answered request 5"
        );
    }
}
