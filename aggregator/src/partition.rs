//! What the aggregator holds for one partition it owns: the protocol core with the
//! unflushed counts, and what the next flush records of the log.

use chrono::{DateTime, Utc};

use crate::protocol::{Core, Fence, Tally};
use crate::store::pending::Owner;
use crate::store::{Claim, Counts, LogMarks};

/// One owned partition.
#[derive(Debug)]
pub struct Partition {
    /// Its protocol state and unflushed counts (see [`crate::protocol`]).
    pub core: Core<Counts>,
    /// The mark of the message at `consumed_to - 1` (0: none consumed yet), and, when
    /// this claim counts the log from its beginning, the first message's offset and
    /// mark: what the next flush records of the log (see `log_check`).
    pub marks: LogMarks,
    /// The newest `occurredAt` counted under this claim (see
    /// `PartitionCommit::event_clock`).
    pub event_clock: Option<DateTime<Utc>>,
    /// The claim's token (see [`Claim::token`]).
    token: u128,
}

impl Tally for Counts {
    fn absorb(&mut self, other: Self) {
        Counts::absorb(self, other);
    }

    fn keys(&self) -> usize {
        self.len()
    }

    fn next_generation(&self) -> Self {
        Counts::next_generation(self)
    }
}

impl Partition {
    /// A partition just claimed, with what fencing Redis answered.
    pub(crate) fn from_claim(claim: &Claim, fence: Fence) -> Self {
        Self {
            core: Core::claimed(claim.epoch, claim.flushed_gen, claim.next_offset, fence),
            marks: LogMarks::default(),
            event_clock: None,
            token: claim.token,
        }
    }

    pub fn epoch(&self) -> i64 {
        self.core.epoch()
    }

    /// Our claim, as Redis knows it.
    pub fn owner(&self) -> Owner {
        Owner {
            epoch: self.core.epoch(),
            token: self.token,
        }
    }

    /// Records that offsets up to `last` were consumed; `last_mark` is the mark of
    /// the message at `last`, `first` the first message of the batch.
    pub fn consumed(&mut self, last: i64, last_mark: i64, first: Option<(i64, i64)>) {
        // Nothing consumed yet and no position: this is the log's first message.
        if self.core.consumed_to().is_none() {
            self.marks.anchor = first;
        }
        self.marks.last = last_mark;
        self.core.consumed(last);
    }
}
