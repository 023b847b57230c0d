//! The read rule: what a reader may add to Postgres' count of a key from the pending
//! generations in Redis. Pure: the ingest's reads and the aggregator's model check
//! both call it.
//!
//! Redis is read first (each partition's live mark and generation hashes in one
//! atomic step), Postgres second. A pending generation counts only if Postgres, in
//! that later snapshot, has not flushed it: a flush committing between the two reads
//! is seen exactly once, through Postgres. The aggregator keeps Redis holding, for
//! every unflushed generation, at least what its flush will write (see the
//! aggregator's `protocol` module), so the sum never goes back while only views are
//! added.
//!
//! Three things make a partition unreadable, and the read waits or answers that it
//! is recovering instead of giving a count that may be wrong:
//! - no live mark on a partition Postgres knows of (Redis lost the mark with the
//!   counts, and the owner has not restored them);
//! - a claim in Postgres newer than the epoch Redis was fenced with when read: the
//!   new owner may have flushed between the two reads, in generations cut
//!   differently from the ones read;
//! - Redis holding less of a live generation than an earlier read of this process saw
//!   ([`Guard`]): a lagging replica promoted, an eviction, under a surviving mark.
//!
//! A key's views are only in its home partitions ([`super::homes`]), so a read of a
//! key waits only when one of those is unreadable; otherwise it leaves the unreadable
//! partitions out and answers.

use std::collections::BTreeMap;

/// What one partition's generation hashes hold for the fields a read asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PartitionView {
    pub partition: i32,
    /// The epoch the partition is marked live under; `None` when not marked.
    pub live: Option<i64>,
    /// The newest owner epoch that fenced or wrote it (0: none).
    pub epoch: i64,
    /// `(generation, the asked fields' values, 0 when absent)` of each generation
    /// hash that holds one.
    pub gens: Vec<(i64, Vec<i64>)>,
    /// `(generation, the offset it is applied up to)` of each generation hash.
    pub applied: Vec<(i64, i64)>,
}

/// The replication id in an `INFO replication` answer. A promoted replica and a
/// restarted server each start a new one, so it names the data set a live mark was
/// written on.
pub fn replid(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("master_replid:"))
        .map(str::trim)
}

/// The epoch a live mark vouches under, as read from a server whose replication id
/// is `server`: `None` when the mark was written on another data set (`marked_on`,
/// the meta hash's `replid`). A promoted replica that lagged, or a server restarted
/// from an older snapshot, holds the mark but not every count written under it, and
/// a reader that never saw the newer counts cannot tell otherwise. A mark without a
/// `replid` (written by an aggregator from before marks
/// named their data set) is trusted as before.
pub fn live_mark<Id: PartialEq>(
    live: Option<i64>,
    marked_on: Option<Id>,
    server: Option<Id>,
) -> Option<i64> {
    match (marked_on, server) {
        (Some(mark), Some(server)) if mark == server => live,
        (Some(_), _) => None,
        (None, _) => live,
    }
}

/// The data set stamp (`replid`) a reader compares, given the meta hash's `owner`
/// (`epoch:token`) and `epoch`: none when the newest fence is not this release's (an
/// aggregator from before stamps writes no `owner`, so the one found is an older
/// claim's, and the stamp beside it is stale). Such a mark is trusted as that
/// release would, rather than read as void until the partition changes hands.
pub fn stamp<'a>(
    replid: Option<&'a str>,
    owner: Option<&str>,
    epoch: Option<i64>,
) -> Option<&'a str> {
    let owner_epoch = owner
        .and_then(|o| o.split_once(':'))
        .and_then(|(e, _)| e.parse::<i64>().ok());
    replid.filter(|_| owner_epoch.is_some() && owner_epoch == epoch)
}

/// What Postgres' snapshot says of one partition: its row's `flushed_gen`,
/// `next_offset` (-1 while NULL) and `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flushed {
    pub partition: i32,
    pub gen: i64,
    pub next_offset: i64,
    pub epoch: i64,
}

/// A partition's row in `flushed` (all zero, `next_offset` -1, when Postgres has
/// none).
pub fn flushed_of(flushed: &[Flushed], partition: i32) -> Flushed {
    flushed
        .iter()
        .find(|f| f.partition == partition)
        .copied()
        .unwrap_or(Flushed {
            partition,
            gen: 0,
            next_offset: -1,
            epoch: 0,
        })
}

/// True when Postgres has a row for `partition`.
pub fn known(flushed: &[Flushed], partition: i32) -> bool {
    flushed.iter().any(|f| f.partition == partition)
}

/// The values of every generation in `views` that Postgres has not flushed: a
/// generation Postgres' `flushed_gen` has passed is in Postgres, and so is one
/// applied only below `next_offset` (Postgres holds every offset below it; a
/// take-over can fold a generation's offsets into an earlier one, which is then
/// flushed under the earlier number).
pub fn unflushed<'v>(
    views: &'v [PartitionView],
    flushed: &'v [Flushed],
) -> impl Iterator<Item = &'v [i64]> {
    views.iter().flat_map(move |v| {
        let row = flushed_of(flushed, v.partition);
        v.gens
            .iter()
            .zip(&v.applied)
            .filter(move |((gen, _), (_, applied))| *gen > row.gen && *applied >= row.next_offset)
            .map(|((_, values), _)| values.as_slice())
    })
}

/// The partitions Postgres knows of that carry no live mark.
pub fn unmarked<'v>(
    views: &'v [PartitionView],
    flushed: &'v [Flushed],
) -> impl Iterator<Item = i32> + 'v {
    views
        .iter()
        .filter(|v| v.live.is_none())
        .map(|v| v.partition)
        .filter(|p| known(flushed, *p))
}

/// The partitions whose Redis half is older than a claim Postgres holds: an owner
/// claimed them after Redis was read and may have flushed generations cut
/// differently from the ones read. Read again (the new owner fences Redis right
/// after its claim).
pub fn claimed_since<'v>(
    views: &'v [PartitionView],
    flushed: &'v [Flushed],
) -> impl Iterator<Item = i32> + 'v {
    views
        .iter()
        .filter(|v| known(flushed, v.partition) && flushed_of(flushed, v.partition).epoch > v.epoch)
        .map(|v| v.partition)
}

/// The partitions a read may not use (unmarked, claimed since Redis was read, or
/// gone back since an earlier read of `guard`), or `Ok` with nothing to wait for. `asked` orders reads: when this
/// read asked Redis.
pub fn check<T: Copy + Ord>(
    views: &[PartitionView],
    flushed: &[Flushed],
    guard: &mut Guard<T>,
    asked: T,
) -> Result<(), Vec<i32>> {
    let mut waiting: Vec<i32> = unmarked(views, flushed).collect();
    waiting.extend(claimed_since(views, flushed));
    waiting.extend(guard.went_back(views, flushed, asked));
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(waiting)
    }
}

/// How far this process's reads saw Redis hold each live partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Guard<T> {
    seen: BTreeMap<i32, Seen<T>>,
}

impl<T> Default for Guard<T> {
    fn default() -> Self {
        Self {
            seen: BTreeMap::new(),
        }
    }
}

/// Under the owner's `epoch`, the newest unflushed generation `gen` applied up to
/// `offset`. Offsets only grow across a partition's generations, so while `gen` is
/// unflushed and the owner the same, a later read finding Redis applied less far
/// (or the generation gone) has met a Redis that went back under a surviving live
/// mark. Its counts are not used until the owner rewrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Seen<T> {
    epoch: i64,
    gen: i64,
    offset: i64,
    /// When the read that saw it asked Redis: only a read that asked later can
    /// find Redis behind it (reads run concurrently).
    asked: T,
}

impl<T: Copy + Ord> Guard<T> {
    /// The live partitions whose Redis state went back since an earlier read;
    /// records how far the others are.
    pub fn went_back(
        &mut self,
        views: &[PartitionView],
        flushed: &[Flushed],
        asked: T,
    ) -> Vec<i32> {
        let mut back = Vec::new();
        for v in views {
            let Some(epoch) = v.live else {
                continue;
            };
            let flushed = flushed_of(flushed, v.partition).gen;
            let newest = v
                .applied
                .iter()
                .filter(|(gen, _)| *gen > flushed)
                .max()
                .copied();
            if let Some(before) = self.seen.get(&v.partition) {
                if asked < before.asked {
                    continue; // an older look than the one recorded
                }
                let behind = newest.map_or(-1, |(_, offset)| offset) < before.offset;
                if before.epoch == epoch && before.gen > flushed && behind {
                    back.push(v.partition);
                    continue;
                }
            }
            match newest {
                Some((gen, offset)) => {
                    let now = Seen {
                        epoch,
                        gen,
                        offset,
                        asked,
                    };
                    self.seen.insert(v.partition, now);
                }
                None => {
                    self.seen.remove(&v.partition);
                }
            }
        }
        back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(live: Option<i64>, epoch: i64, gens: &[(i64, i64, i64)]) -> PartitionView {
        PartitionView {
            partition: 0,
            live,
            epoch,
            gens: gens.iter().map(|(g, _, n)| (*g, vec![*n])).collect(),
            applied: gens.iter().map(|(g, o, _)| (*g, *o)).collect(),
        }
    }

    fn row(gen: i64, next_offset: i64, epoch: i64) -> Vec<Flushed> {
        vec![Flushed {
            partition: 0,
            gen,
            next_offset,
            epoch,
        }]
    }

    fn pending(views: &[PartitionView], flushed: &[Flushed]) -> i64 {
        unflushed(views, flushed).map(|v| v[0]).sum()
    }

    #[test]
    fn a_generation_postgres_holds_is_not_added_again() {
        // Generation 2 (offsets to 9) is flushed; generation 3 is not.
        let views = [view(Some(1), 1, &[(2, 9, 10), (3, 14, 5)])];
        assert_eq!(pending(&views, &row(2, 10, 1)), 5);
        // A take-over folded generation 3 into 2, and Postgres flushed the fold as
        // generation 2: a reader whose Redis half predates the flush still holds
        // the old generation 3, applied only below `next_offset`.
        assert_eq!(pending(&views, &row(2, 15, 2)), 0);
    }

    #[test]
    fn a_claim_since_redis_was_read_makes_the_read_look_again() {
        let views = [view(Some(1), 1, &[(1, 4, 5)])];
        let mut guard = Guard::default();
        assert_eq!(check(&views, &row(0, -1, 1), &mut guard, 1), Ok(()));
        assert_eq!(check(&views, &row(0, -1, 2), &mut guard, 2), Err(vec![0]));
    }

    #[test]
    fn a_mark_vouches_only_on_the_data_set_it_was_written_on() {
        let info =
            "# Replication\r\nrole:master\r\nmaster_replid:abc123\r\nmaster_replid2:0000\r\n";
        assert_eq!(replid(info), Some("abc123"));
        assert_eq!(replid("role:master\r\n"), None);
        assert_eq!(live_mark(Some(3), Some("abc"), Some("abc")), Some(3));
        assert_eq!(
            live_mark(Some(3), Some("abc"), Some("def")),
            None,
            "promoted"
        );
        assert_eq!(live_mark(Some(3), Some("abc"), None), None, "no id now");
        assert_eq!(
            live_mark(Some(3), None, Some("def")),
            Some(3),
            "an older writer"
        );
        assert_eq!(live_mark::<&str>(None, None, None), None);
    }

    #[test]
    fn a_stamp_counts_only_beside_a_fence_of_this_release() {
        assert_eq!(stamp(Some("abc"), Some("4:9f"), Some(4)), Some("abc"));
        // The newest fence wrote no owner: an older release's, whose stamp is stale.
        assert_eq!(stamp(Some("abc"), Some("3:9f"), Some(4)), None);
        assert_eq!(stamp(Some("abc"), None, Some(4)), None);
        assert_eq!(stamp(Some("abc"), Some("junk"), Some(4)), None);
    }
}
