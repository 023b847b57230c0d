//! The Postgres side of the counts: taking partitions over (`claim.rs`), the fenced
//! flush that writes counts and offsets in one transaction (`flush.rs`, whose head
//! states how), and the reads that take a key's flushed counts with every
//! partition's position in one snapshot (`reads.rs`).

mod claim;
mod flush;
mod reads;

pub use claim::{claim, partition_epoch, Claim, LogMarks};
pub use flush::{add_counts, flush, FlushError, FlushOutcome, PartitionCommit};
pub use reads::{snapshot, top, totals_snapshot, Snapshot};

/// Which consumer group and topic the partition rows belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub group: String,
    pub topic: String,
}
