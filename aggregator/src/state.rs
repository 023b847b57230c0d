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
}

impl Partition {
    pub fn from_claim(claim: &Claim) -> Self {
        Self {
            epoch: claim.epoch,
            gen: claim.flushed_gen + 1,
            flushed_to: claim.next_offset,
            consumed_to: claim.next_offset,
            pending: HashMap::new(),
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
    pub fn pending_keys(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}
