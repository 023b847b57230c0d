//! Pending counts in Redis: what the aggregators have consumed and Postgres does not
//! hold yet, kept per partition and flush generation.
//!
//! The keys and fields are named in `viewpipe_schema::pending`, which the ingest's reads
//! share; this module is the aggregator's side: the scripts that write them.
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
//! Going back keeps them (a lagging replica promoted, a restart from an older
//! snapshot), so a mark names the data set it was written on (`replid`, the server's
//! replication id, which either event changes) and is void on another: to readers,
//! to the owner's check and batches, and to a take-over (which recounts).

use viewpipe_runtime::redis_conn::RedisConn;
use viewpipe_schema::pending::Layout;

mod fields;
mod scripts;
mod sink;
mod write;

pub use fields::fields;
pub(crate) use fields::for_each_field;
pub use sink::Pending;
pub use write::{Applied, PartitionBatch, TakeOver};

/// A claim as Redis knows it: its epoch, and a token no other claim has. Postgres
/// hands out each epoch once, unless it is restored to before a claim; then two
/// claims hold the same epoch, and the token tells their fences apart (the second
/// finds the partition fenced, as by a newer epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub epoch: i64,
    pub token: u128,
}

impl Owner {
    /// What the scripts store in the meta hash's `owner` field: `epoch:token`.
    fn field(&self) -> String {
        format!("{}:{:x}", self.epoch, self.token)
    }
}

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
            take_over_script: redis::Script::new(&format!("{FENCE_LUA}{TAKE_OVER_LUA}")),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }
}
