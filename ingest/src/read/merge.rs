//! Merging what Redis holds with what Postgres flushed: a pending generation counts
//! only while Postgres has not flushed it.

use super::pending::PartitionView;
use super::sql::Snapshot;

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

/// The values of every generation in `views` that `flushed_gens` has not flushed.
pub(super) fn unflushed<'v>(
    views: &'v [PartitionView],
    flushed_gens: &'v [(i32, i64)],
) -> impl Iterator<Item = &'v [i64]> {
    views.iter().flat_map(move |v| {
        let flushed = flushed_gen(flushed_gens, v.partition);
        v.gens
            .iter()
            .filter(move |(gen, _)| *gen > flushed)
            .map(|(_, values)| values.as_slice())
    })
}

/// A partition's `flushed_gen` (0 when Postgres has no row for it).
pub(super) fn flushed_gen(flushed_gens: &[(i32, i64)], partition: i32) -> i64 {
    flushed_gens
        .iter()
        .find(|(p, _)| *p == partition)
        .map_or(0, |(_, g)| *g)
}
