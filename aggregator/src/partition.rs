//! What the aggregator holds in memory for one partition it owns.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::store::{Claim, Counts, LogMarks};

/// One owned partition.
#[derive(Debug)]
pub struct Partition {
    /// Our epoch from the claim; flushes and Redis writes under it are refused once
    /// another aggregator claims the partition.
    pub epoch: i64,
    /// The generation counts are being gathered in (Postgres `flushed_gen` + 1, or + 2
    /// while the previous one is being flushed).
    pub gen: i64,
    /// Offsets below this are in Postgres already; `None` until the first flush.
    pub flushed_to: Option<i64>,
    /// One past the last offset consumed (counted, duplicate or invalid alike).
    pub consumed_to: Option<i64>,
    /// The views of generation `gen`, by key: exactly the events from the end of the
    /// sealed generation (or `flushed_to`) up to `consumed_to`. This, not Redis, is
    /// what the flush writes.
    pub current: Counts,
    /// The previous generation while its flush is in flight or waits for a retry.
    pub sealed: Option<Sealed>,
    /// The offset Redis holds generation `gen` up to, as far as we know (-1: none).
    /// The next batch is applied as a compare-and-set from here.
    pub redis_at: i64,
    /// While `Some(x)`: Redis already holds this generation up to offset `x` (a
    /// predecessor counted that far before it died). We re-count those offsets in
    /// memory only, and neither flush nor vouch for Redis until we have passed `x`:
    /// flushing earlier would seal a generation whose Redis counts reach further than
    /// the flushed ones, and reads would dip.
    pub replay_to: Option<i64>,
    /// True while we have marked the partition live in Redis under our epoch.
    pub marked_live: bool,
    /// Set when Redis was found to have lost (part of) our pending counts: they are
    /// rewritten from memory before anything else is written.
    pub needs_restore: bool,
    /// False while Redis has not been fenced for our epoch (it did not answer at the
    /// claim): we count in memory only, and fence it before the restore.
    pub fenced: bool,
    /// The newest flush request our flushes of this partition answered.
    pub flush_seq: i64,
    /// The mark of the message at `consumed_to - 1` (0: none consumed yet), and, when
    /// this claim counts the log from its beginning, the first message's offset and
    /// mark: what the next flush records of the log (see `log_check`).
    pub marks: LogMarks,
    /// The newest `occurredAt` counted under this claim (see
    /// `PartitionCommit::event_clock`).
    pub event_clock: Option<DateTime<Utc>>,
}

/// A generation handed to the flush, kept until Postgres has it.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub gen: i64,
    /// One past its last offset: the partition's `next_offset` once it is flushed.
    pub next_offset: i64,
    pub counts: Arc<Counts>,
}

impl Partition {
    /// A partition just claimed, whose generation Redis holds up to `redis_at` (-1:
    /// nothing) according to the take-over; `None` when Redis did not answer, so
    /// that it is fenced and rewritten from memory once it does.
    pub(crate) fn from_claim(claim: &Claim, redis_at: Option<i64>) -> Self {
        let fenced = redis_at.is_some();
        let redis_at = redis_at.unwrap_or(-1);
        let start = claim.next_offset.unwrap_or(0);
        Self {
            epoch: claim.epoch,
            gen: claim.flushed_gen + 1,
            flushed_to: claim.next_offset,
            consumed_to: claim.next_offset,
            current: Counts::default(),
            sealed: None,
            redis_at,
            replay_to: (redis_at >= start).then_some(redis_at),
            marked_live: false,
            needs_restore: !fenced,
            fenced,
            flush_seq: 0,
            marks: LogMarks::default(),
            event_clock: None,
        }
    }

    /// Counts a recreated log from its beginning: its anchor replaces the old log's.
    pub(crate) fn count_new_log(&mut self) {
        self.marks.new_log = true;
    }

    /// True once memory holds everything Redis holds for the partition.
    pub(crate) fn caught_up(&self) -> bool {
        self.replay_to.is_none()
    }

    /// Records that offsets up to `last` were consumed; `last_mark` is the mark of
    /// the message at `last`, `first` the first message of the batch.
    pub fn consumed(&mut self, last: i64, last_mark: i64, first: Option<(i64, i64)>) {
        // Nothing consumed yet and no position: this is the log's first message.
        if self.consumed_to.is_none() {
            self.marks.anchor = first;
        }
        self.marks.last = last_mark;
        self.consumed_to = Some(last + 1);
        if self.replay_to.is_some_and(|x| last >= x) {
            self.replay_to = None;
        }
    }

    /// True when consumption moved past what is flushed or being flushed.
    pub(crate) fn has_progress(&self) -> bool {
        let sealed_to = self.sealed.as_ref().map(|s| s.next_offset);
        self.consumed_to > sealed_to.or(self.flushed_to)
    }

    /// Keys with counts not yet in Postgres.
    pub(crate) fn pending_keys(&self) -> usize {
        self.current.len() + self.sealed.as_ref().map_or(0, |s| s.counts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(next_offset: Option<i64>, redis_at: Option<i64>) -> Partition {
        Partition::from_claim(
            &Claim {
                next_offset,
                flushed_gen: 4,
                epoch: 2,
                ..Claim::default()
            },
            redis_at,
        )
    }

    #[test]
    fn a_claim_starts_the_next_generation_at_the_postgres_position() {
        let p = claimed(Some(10), Some(-1));
        assert_eq!(
            (p.gen, p.flushed_to, p.consumed_to),
            (5, Some(10), Some(10))
        );
        assert!(!p.has_progress());
        assert!(p.caught_up());
    }

    #[test]
    fn a_takeover_replays_what_redis_holds_before_it_is_caught_up() {
        let mut p = claimed(Some(10), Some(19));
        assert_eq!(p.replay_to, Some(19));
        p.consumed(15, 1, None);
        assert!(!p.caught_up());
        p.consumed(19, 1, None);
        assert!(p.caught_up());
        // Redis behind Postgres' position (a stale leftover) needs no replay.
        assert!(claimed(Some(10), Some(5)).caught_up());
    }

    #[test]
    fn a_claim_redis_did_not_answer_counts_in_memory_until_fenced() {
        let p = claimed(Some(10), None);
        assert!(!p.fenced && p.needs_restore && p.caught_up());
    }
}
