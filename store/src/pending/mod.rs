//! Pending counts in Redis: what the aggregators have consumed and Postgres does not
//! hold yet, kept per partition and flush generation.
//!
//! # Layout
//! Every key of partition `p` carries the hash tag `{<scope>.<p>}`, so one partition's
//! keys share a Redis Cluster slot and each script below touches one slot. `<scope>`
//! is a short hash of the consumer group and topic, so two deployments sharing a prefix
//! cannot meet.
//! - `{prefix}:{s.p}:m`, the partition's meta hash: `epoch`, the newest owner epoch
//!   that wrote it; `gen`, the newest generation written; `live`, the epoch of the owner
//!   that vouches Redis holds all of the partition's pending counts (see "Loss").
//! - `{prefix}:{s.p}:g0` and `:g1`: the counts of the partition's even and odd
//!   generations. At most two generations of a partition are unflushed at once (one
//!   being flushed, the next being written) and they differ in parity, so two hashes
//!   suffice and a reader can name every key it reads. Fields: `@g` the generation,
//!   `@o` the highest offset applied, `t:<key>` views of the key, `d:<key>:<day>` views
//!   of the key on that UTC day.
//!
//! Client-chosen `eventId`s are remembered in Postgres, not here (see
//! the aggregator's `event_ids`). A pending key therefore costs two hash fields per generation
//! (its total and one per day), whatever its traffic.
//!
//! # Applying a batch
//! One script call per partition and batch adds the batch's pre-aggregated counts. It
//! is a compare-and-set on `@o`: the writer says which offset it believes Redis holds
//! (`prev`) and the batch's last offset; the script adds only if `@o` equals `prev`,
//! then sets `@o` to the last offset. Any other `@o` is answered, never guessed at:
//! at or past the batch's end the batch is in already (a retry after a lost reply),
//! and below it Redis lost data or holds part of the batch (the writer then rewrites
//! the generation from memory, [`PendingStore::restore`]). So a batch is never added
//! twice, whatever the batch boundaries, retries or crashes.
//!
//! # Fencing
//! A writer with an older epoch or generation than the meta hash has seen is refused
//! ([`Applied::Stale`]). A new owner fences first ([`PendingStore::take_over`]): it
//! raises `epoch`, folds a generation its predecessor had started beyond the one
//! Postgres expects next into that one (readers see the same sum either way), and
//! learns how far Redis got, which is how far it must re-count before it may flush.
//!
//! # Loss
//! Losing Redis' data loses the `live` marks with the counts. Readers wait for a mark
//! on every partition Postgres knows of; the owner notices the loss on its next write
//! or check, rewrites the counts from memory and marks the partition live again.

use crate::redis_conn::RedisConn;

mod layout;
mod read;
mod scripts;
mod write;

pub(crate) use layout::{day_field, for_each_field, total_field};
pub use layout::{fields, BadPrefix, Layout};
pub use read::PartitionView;
pub use write::{Applied, PartitionBatch, TakeOver};

use scripts::{APPLY_LUA, FENCE_LUA, RESTORE_LUA, TAKE_OVER_LUA};

/// A generation hash outlives its last write by this long. Generations are flushed
/// and deleted within seconds; expiry only ever drops leftovers Postgres already has.
pub(crate) const HASH_TTL_SECS: u64 = 7 * 24 * 60 * 60;
/// Most field/value pairs one restore script call writes, so that a restore of a
/// large generation does not hold Redis for long.
const RESTORE_CHUNK: usize = 5000;

/// The Redis side of the counts.
#[derive(Clone)]
pub struct PendingStore {
    conn: RedisConn,
    layout: Layout,
    apply_script: redis::Script,
    restore_script: redis::Script,
    take_over_script: redis::Script,
}

impl PendingStore {
    pub fn new(conn: RedisConn, layout: Layout) -> Self {
        Self {
            conn,
            layout,
            apply_script: redis::Script::new(&format!("{FENCE_LUA}{APPLY_LUA}")),
            restore_script: redis::Script::new(&format!("{FENCE_LUA}{RESTORE_LUA}")),
            take_over_script: redis::Script::new(TAKE_OVER_LUA),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }
}
