//! What the aggregator holds in memory for the partitions it owns.

use std::collections::{BTreeMap, HashMap};

use viewpipe_store::{Claim, KeyDelta};

/// One owned partition.
#[derive(Debug)]
pub struct Partition {
    /// Our epoch from the claim; flushes under it are refused once another
    /// aggregator claims the partition.
    pub epoch: i64,
    /// The generation pending counts are written under (Postgres `flushed_gen` + 1).
    pub gen: i64,
    /// Offsets below this are in Postgres already; `None` until the first flush.
    pub flushed_to: Option<i64>,
    /// One past the last offset consumed (counted, duplicate or invalid alike).
    pub consumed_to: Option<i64>,
    /// Counts consumed since the last flush, by key. This, not Redis, is what the
    /// flush writes: it is exactly the events between `flushed_to` and `consumed_to`.
    pub pending: HashMap<String, KeyDelta>,
    /// The log end when we took the partition over, while we have not consumed that
    /// far (`None` once we have). A predecessor that died may have put counts up to
    /// there into Redis; until we have counted as far, we neither flush (that would
    /// seal its Redis generation while our memory lacks part of it) nor vouch for
    /// Redis holding the partition's counts.
    pub catch_up_to: Option<i64>,
    /// True while we have marked the partition live in Redis under our epoch.
    pub marked_live: bool,
    /// The newest flush request our flushes of this partition answered.
    pub flush_seq: i64,
}

impl Partition {
    pub fn from_claim(claim: &Claim) -> Self {
        Self {
            epoch: claim.epoch,
            gen: claim.flushed_gen + 1,
            flushed_to: claim.next_offset,
            consumed_to: claim.next_offset,
            pending: HashMap::new(),
            catch_up_to: None,
            marked_live: false,
            flush_seq: 0,
        }
    }

    /// True once we consumed at least as far as the log reached at the takeover.
    pub fn caught_up(&self) -> bool {
        self.catch_up_to.is_none()
    }

    /// Clears `catch_up_to` once `position` (the next offset we will consume or the
    /// consumer's fetch position, whichever is further) reached it.
    pub fn note_position(&mut self, position: Option<i64>) {
        if let Some(target) = self.catch_up_to {
            let reached = self.consumed_to.unwrap_or(0).max(position.unwrap_or(0));
            if reached >= target {
                self.catch_up_to = None;
            }
        }
    }

    /// True when consumption moved past what Postgres holds.
    pub fn has_progress(&self) -> bool {
        self.consumed_to > self.flushed_to
    }

    /// True for an offset already written to Postgres (a re-delivery).
    pub fn is_flushed(&self, offset: i64) -> bool {
        self.flushed_to.is_some_and(|f| offset < f)
    }
}

/// Every partition this aggregator owns, by partition number.
#[derive(Debug, Default)]
pub struct Core {
    pub partitions: BTreeMap<i32, Partition>,
}

impl Core {
    /// True when a caught-up partition has not answered flush request `requested`.
    pub fn answers_pending(&self, requested: i64) -> bool {
        self.partitions
            .values()
            .any(|p| p.caught_up() && p.flush_seq < requested)
    }

    pub fn pending_keys(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(next_offset: Option<i64>) -> Partition {
        Partition::from_claim(&Claim {
            partition: 0,
            next_offset,
            flushed_gen: 4,
            epoch: 2,
        })
    }

    #[test]
    fn a_claim_starts_the_next_generation_at_the_postgres_position() {
        let p = claimed(Some(10));
        assert_eq!(
            (p.gen, p.flushed_to, p.consumed_to),
            (5, Some(10), Some(10))
        );
        assert!(!p.has_progress());
        assert!(p.is_flushed(9) && !p.is_flushed(10));
    }

    #[test]
    fn catching_up_needs_the_takeover_log_end() {
        let mut p = claimed(Some(10));
        p.catch_up_to = Some(20);
        p.note_position(None);
        assert!(!p.caught_up());
        p.consumed_to = Some(19);
        p.note_position(Some(15));
        assert!(!p.caught_up());
        // The fetch position passes the target when the last offsets are not
        // messages (transaction markers), so it counts too.
        p.note_position(Some(20));
        assert!(p.caught_up());

        // A partition never flushed, whose log is empty, is caught up at once.
        let mut empty = claimed(None);
        empty.catch_up_to = Some(0);
        empty.note_position(None);
        assert!(empty.caught_up());
    }
}
