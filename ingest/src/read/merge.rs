//! Merging what Redis holds with what Postgres flushed: a pending generation counts
//! only while Postgres has not flushed it.

use super::pending::PartitionView;
use super::sql::Snapshot;
use viewpipe_schema::pending::read::unflushed;

/// Pending counts read from Redis, and the Postgres snapshot taken after them.
pub(super) struct Merged {
    pub(super) views: Vec<PartitionView>,
    pub(super) snap: Snapshot,
}

impl Merged {
    /// The key's total: flushed, plus every unflushed generation's pending count.
    pub(super) fn total(&self) -> i64 {
        self.snap.total + self.unflushed().map(|values| values[0]).sum::<i64>()
    }

    /// The pending values (the key's total, then its days) of every generation
    /// Postgres has not flushed.
    pub(super) fn unflushed(&self) -> impl Iterator<Item = &[i64]> {
        unflushed(&self.views, &self.snap.gens)
    }
}
