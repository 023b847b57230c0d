//! The Postgres side of the counts: taking partitions over (`claim.rs`) and the
//! fenced flush that writes counts and offsets in one transaction (`flush.rs`, whose
//! head states how). The ingest's reads have their own statements
//! (`ingest/src/read/sql.rs`).

mod claim;
mod flush;

pub use claim::{claim, partition_epoch, Claim, LogMarks};
pub use flush::{flush, FlushError, FlushOutcome, PartitionCommit};

/// Which consumer group and topic the partition rows belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub group: String,
    pub topic: String,
}
