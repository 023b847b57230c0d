//! How viewpipe keeps counts, shared by the aggregator (writes) and the ingest (reads,
//! whose merging of both is the ingest's own `read` module).
//!
//! - [`counts`]: counts held in memory, per batch and per partition generation.
//! - [`deadline`]: client-side deadlines on Postgres round trips.
//! - [`pending`]: the Redis side, counts consumed but not yet in Postgres, kept per
//!   partition and flush generation and applied as a compare-and-set on the offset.
//! - [`postgres`]: the Postgres side, claiming partitions, the fenced flush that
//!   writes counts and offsets in one transaction.
//! - [`redis_conn`]: one Redis server or a Redis Cluster behind one connection type.
//! - [`jobs`]: flush requests that every aggregator of a group answers.
//! - [`retention`]: deleting old daily rows, finished jobs and visitor salts.
//! - [`visitors`]: unique visitors per key and day, HyperLogLog sketches merged by
//!   the flush.
//!
//! The protocol that makes these exact is described in `docs/exactly-once.md` and in
//! the aggregator's `flush` module.

pub mod backfill;
pub mod counts;
pub mod deadline;
pub mod jobs;
pub mod pending;
pub mod postgres;
pub mod redis_conn;
pub mod retention;
pub mod sql;
pub mod visitors;

pub use counts::{Counts, KeyCounts};
pub use pending::PendingStore;
pub use postgres::{Claim, FlushError, FlushOutcome, LogMarks, PartitionCommit, Scope};
pub use redis_conn::RedisConn;
