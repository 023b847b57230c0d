//! How viewpipe keeps counts, shared by the aggregator (writes) and the ingest (reads).
//!
//! - [`pending`]: the Redis side, counts consumed but not yet in Postgres, applied
//!   idempotently per partition offset and tagged with a flush generation.
//! - [`postgres`]: the Postgres side, claiming partitions, the fenced flush that
//!   writes counts and offsets in one transaction, and the read queries.
//! - [`read`]: reads that merge both without counting anything twice.
//! - [`jobs`]: flush requests that every aggregator of a group answers.
//!
//! The protocol that makes these exact is described in `docs/exactly-once.md` and in
//! the aggregator's `flush` module.

pub mod jobs;
pub mod pending;
pub mod postgres;
pub mod read;

pub use pending::{KeyMessages, Message, PendingStore};
pub use postgres::{Claim, FlushError, FlushOutcome, KeyDelta, PartitionCommit, Scope};
