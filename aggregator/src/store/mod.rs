//! How the aggregator keeps counts: its Redis scripts and its Postgres statements.
//!
//! - [`counts`]: counts held in memory, per batch and per partition generation.
//! - [`pending`]: the Redis side, counts consumed but not yet in Postgres, kept per
//!   partition and flush generation and applied as a compare-and-set on the offset.
//! - [`postgres`]: the Postgres side, claiming partitions, the fenced flush that
//!   writes counts and offsets in one transaction.
//! - [`backfill`]: rebuilding a month's rows from a replay, under the month's lock.
//! - [`retention`]: deleting old daily rows, finished jobs and visitor salts.
//! - [`visitors`]: unique visitors per key and day, HyperLogLog sketches merged by
//!   the flush.
//!
//! The names of the Redis keys are shared with the ingest's reads
//! (`viewpipe_schema::pending`). The protocol that makes these exact is described at
//! the head of the aggregator's [`flush`](crate::flush) module.

pub mod backfill;
pub mod counts;
pub mod pending;
pub mod postgres;
pub mod retention;
pub mod visitors;

pub use counts::{Counts, KeyCounts};
pub use pending::PendingStore;
pub use postgres::{Claim, FlushError, FlushOutcome, LogMarks, PartitionCommit, Scope};
