//! The Postgres side of the counts: taking partitions over (`claim.rs`) and the
//! fenced flush that writes counts and offsets in one transaction (`flush.rs`, whose
//! head states how). The ingest's reads have their own statements
//! (`ingest/src/read/sql.rs`).

mod claim;
mod flush;

pub(crate) use claim::partition_epoch;
pub use claim::{claim, Claim, LogMarks};
pub use viewpipe_schema::Scope;

pub use flush::{flush, FlushError, FlushOutcome, PartitionCommit};
