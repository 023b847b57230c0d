//! Work between batches: live marks, and restoring what Redis lost.

use super::*;

/// One generation to rewrite: generation, last offset, live, its fields.
type Rewrite = (i64, i64, bool, Vec<(String, i64)>);

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
            let owned: Vec<(i32, i64)> = state
                .partitions
                .iter()
                .map(|(n, p)| (*n, p.core.gen()))
                .collect();
            match self.rt.block_on(self.pending.marks(&owned)) {
                Ok(marks) => {
                    for ((partition, _), (mark, applied)) in owned.into_iter().zip(marks) {
                        let Some(p) = state.partitions.get_mut(&partition) else {
                            continue;
                        };
                        let step = p.core.checked(mark, applied);
                        self.follow(&mut state, partition, step);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read live marks"),
            }
        }
        let in_flight = state.flush.as_ref().is_some_and(|f| f.task.is_some());
        let restorable: Vec<i32> = state
            .partitions
            .iter()
            .filter(|(_, p)| p.core.restore_due())
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
    /// leftovers a predecessor left there; where the fence finds Redis ahead of
    /// memory, the partition replays instead (see [`crate::protocol`]).
    /// Returns false when Redis or Postgres did not answer.
    fn restore(&self, state: &mut State, partition: i32) -> bool {
        let Some(p) = state.partitions.get_mut(&partition) else {
            return true;
        };
        let (epoch, owner) = (p.epoch(), p.owner());
        // Redis' fence may be gone with its data: only an owner whose claim Postgres
        // still holds writes the partition again (a newer owner fences Redis before
        // it writes, so one that claims after this look finds our write, or refuses it).
        let claimed = self.rt.block_on(deadline::within(
            deadline::ROUND_TRIP,
            postgres::partition_epoch(&self.db, &self.scope, partition),
        ));
        match claimed {
            Ok(newest) if newest == epoch => {}
            Ok(newest) => {
                // A newer claim; or Postgres went back to before ours.
                let reason = if newest > epoch {
                    Hold::Fenced
                } else {
                    Hold::Behind
                };
                self.hold(state, partition, reason);
                return true;
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot check the claim before restoring");
                return false;
            }
        }
        let Some(p) = state.partitions.get_mut(&partition) else {
            return true;
        };
        if let Some(gen) = p.core.restore().fence_gen {
            match self.fence(partition, owner, gen, Duration::ZERO) {
                Fencing::Done(at, lost) => {
                    let fence = self.fence_answer(partition, at, lost);
                    let Some(p) = state.partitions.get_mut(&partition) else {
                        return true;
                    };
                    if !p.core.fenced(fence) {
                        tracing::info!(
                            partition,
                            state = ?p.core.redis(),
                            "fenced late: Redis holds, or held, a predecessor's counts past ours; counting up to there before writing it"
                        );
                        return true;
                    }
                }
                Fencing::Full(to) => {
                    if let Some(p) = state.partitions.get_mut(&partition) {
                        p.core.fenced(protocol::Fence::Full { to });
                    }
                    return false;
                }
                Fencing::NoAnswer => return false,
                Fencing::Refused(reason) => {
                    self.hold(state, partition, reason);
                    return true;
                }
            }
        }
        let Some(p) = state.partitions.get_mut(&partition) else {
            return true;
        };
        let writes: Vec<Rewrite> = p
            .core
            .restore()
            .rewrites
            .iter()
            .map(|w| {
                (
                    w.gen,
                    w.last,
                    w.live,
                    w.counts.map_or_else(Vec::new, Counts::fields),
                )
            })
            .collect();
        for (gen, last, live, fields) in writes {
            let done = self.rt.block_on(
                self.pending
                    .restore(partition, owner, gen, last, live, &fields),
            );
            match done {
                Ok(Applied::Stale) => {
                    let reason = self.stale_reason(partition, epoch);
                    self.hold(state, partition, reason);
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot restore pending counts yet");
                    return false;
                }
            }
        }
        p.core.restored();
        true
    }
}
