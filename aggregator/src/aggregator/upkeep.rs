//! Work between batches: live marks, and restoring what Redis lost.

use super::*;

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
            let owned: Vec<i32> = state.partitions.keys().copied().collect();
            match self.rt.block_on(self.pending.live_epochs(&owned)) {
                Ok(marks) => {
                    for (partition, mark) in owned.into_iter().zip(marks) {
                        let Some(p) = state.partitions.get_mut(&partition) else {
                            continue;
                        };
                        if mark.is_some_and(|e| e > p.epoch) {
                            self.hold(&mut state, partition, Hold::Fenced);
                        } else if mark != Some(p.epoch) && p.marked_live {
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
        if in_flight || restorable.is_empty() {
            return;
        }
        // A restore writes memory as it is: the batch Redis is applying goes in first.
        self.land(&mut state);
        for partition in restorable {
            self.restore(&mut state, partition);
        }
    }

    /// Rewrites a partition's unflushed generations from memory and marks it live.
    fn restore(&self, state: &mut State, partition: i32) {
        let Some(p) = state.partitions.get_mut(&partition) else {
            return;
        };
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
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot restore pending counts yet");
                    return;
                }
            }
        }
        p.redis_at = last;
        p.marked_live = true;
        p.needs_restore = false;
    }
}
