//! Work between batches: live marks, and restoring what Redis lost.

use super::*;

/// How long after a failed restore the next is tried.
const RESTORE_RETRY: Duration = Duration::from_secs(1);

impl Aggregator {
    /// Work between batches: checks the live marks of owned partitions, and rewrites
    /// from memory what Redis lost (once no flush is in flight, so that memory holds
    /// every unflushed generation).
    pub fn upkeep(&self) {
        if !self.pending.is_redis() {
            return;
        }
        let mut state = self.state();
        if Instant::now() >= state.next_live_check {
            state.next_live_check = Instant::now() + LIVE_CHECK_EVERY;
            // A batch Redis is applying only raises the offsets read here, and
            // `redis_at` moves once it landed: no need to wait for it.
            let owned: Vec<(i32, i64)> =
                state.partitions.iter().map(|(n, p)| (*n, p.gen)).collect();
            match self.rt.block_on(self.pending.marks(&owned)) {
                Ok(marks) => {
                    for ((partition, _), (mark, applied)) in owned.into_iter().zip(marks) {
                        let Some(p) = state.partitions.get_mut(&partition) else {
                            continue;
                        };
                        if mark.is_some_and(|e| e > p.epoch) {
                            self.hold(&mut state, partition, Hold::Fenced);
                        } else if mark != Some(p.epoch) && p.marked_live {
                            self.lost(partition, p);
                        } else if p.marked_live
                            && !p.needs_restore
                            && p.redis_at >= 0
                            && applied.is_none_or(|o| o < p.redis_at)
                        {
                            // The mark survived but the counts went back: a lagging
                            // replica promoted, an eviction.
                            tracing::warn!(
                                partition,
                                redis_at = ?applied,
                                expected = p.redis_at,
                                "Redis holds less of this partition than was written to it; restoring it from memory"
                            );
                            self.lost(partition, p);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read live marks"),
            }
        }
        let in_flight = state.flush.as_ref().is_some_and(|f| f.task.is_some());
        let restorable: Vec<i32> = state
            .partitions
            .iter()
            .filter(|(_, p)| p.caught_up() && (p.needs_restore || !p.marked_live))
            .map(|(n, _)| *n)
            .collect();
        if restorable.is_empty() {
            self.health.set_fault("redis_behind", None);
        }
        if in_flight || restorable.is_empty() || Instant::now() < state.next_restore {
            return;
        }
        // A restore writes memory as it is: the batch Redis is applying goes in first.
        self.land(&mut state);
        let waiting = restorable.len();
        for partition in restorable {
            if !self.restore(&mut state, partition) {
                // Redis is away or full: counting goes on in memory and flushes go on;
                // reads miss these partitions' pending counts until Redis takes them.
                state.next_restore = Instant::now() + RESTORE_RETRY;
                self.health.set_fault(
                    "redis_behind",
                    Some(format!(
                        "{waiting} partitions counted in memory only: Redis does not take writes"
                    )),
                );
                return;
            }
        }
    }

    /// Rewrites a partition's unflushed generations from memory and marks it live.
    /// A partition Redis was not fenced for at its claim is fenced first: for the
    /// oldest generation Postgres has not flushed, which drops whatever older
    /// leftovers a predecessor left there.
    /// Returns false when Redis did not answer.
    fn restore(&self, state: &mut State, partition: i32) -> bool {
        let Some(p) = state.partitions.get(&partition) else {
            return true;
        };
        if !p.fenced {
            let oldest = p.sealed.as_ref().map_or(p.gen, |s| s.gen);
            match self.fence(partition, p.epoch, oldest, Duration::ZERO) {
                Fence::Done(_) => {}
                Fence::NoAnswer => return false,
                Fence::Refused(reason) => {
                    self.hold(state, partition, reason);
                    return true;
                }
            }
        }
        let Some(p) = state.partitions.get_mut(&partition) else {
            return true;
        };
        p.fenced = true;
        let mut writes = Vec::new();
        if let Some(sealed) = &p.sealed {
            writes.push((
                sealed.gen,
                sealed.next_offset - 1,
                false,
                sealed.counts.fields(),
            ));
        }
        let last = p.consumed_to.map_or(-1, |c| c - 1);
        writes.push((p.gen, last, true, p.current.fields()));
        for (gen, last, live, fields) in writes {
            let done = self.rt.block_on(
                self.pending
                    .restore(partition, p.epoch, gen, last, live, &fields),
            );
            match done {
                Ok(Applied::Stale) => {
                    self.hold(state, partition, Hold::Fenced);
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot restore pending counts yet");
                    return false;
                }
            }
        }
        p.redis_at = last;
        p.marked_live = true;
        p.needs_restore = false;
        true
    }
}
