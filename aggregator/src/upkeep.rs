//! Work the consumer loop does between batches: noticing when taken-over partitions
//! have caught up, and keeping Redis' live marks (restoring lost pending counts).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;

use viewpipe_store::pending::Applied;

use crate::consumer::{AggregatorContext, Shared};
use crate::metrics as m;
use crate::state::Core;

/// How often log ends unknown at a takeover are looked up again.
const SLOW_EVERY: Duration = Duration::from_secs(2);

/// When the slower upkeep last ran.
#[derive(Default)]
pub struct Clock {
    last_slow: Option<Instant>,
}

impl Clock {
    fn slow_due(&mut self) -> bool {
        let due = self.last_slow.is_none_or(|t| t.elapsed() >= SLOW_EVERY);
        if due {
            self.last_slow = Some(Instant::now());
        }
        due
    }
}

/// Clears `catch_up_to` of partitions that reached it; every few seconds, looks up log
/// ends that were unknown at the takeover.
pub fn catch_up(
    consumer: &BaseConsumer<AggregatorContext>,
    shared: &Shared,
    core: &mut Core,
    clock: &mut Clock,
) {
    let topic = &shared.scope.topic;
    if core.partitions.values().any(|p| !p.caught_up()) {
        let positions = consumer.position().ok();
        for (&partition, state) in core.partitions.iter_mut() {
            if state.caught_up() {
                continue;
            }
            let position = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(topic, partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            state.note_position(position);
            if state.caught_up() {
                tracing::info!(partition, "caught up with the predecessor's position");
            }
        }
    }
    if !clock.slow_due() {
        return;
    }
    for (&partition, state) in core.partitions.iter_mut() {
        if state.catch_up_to == Some(i64::MAX) {
            if let Ok((_, high)) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(1))
            {
                state.catch_up_to = Some(high);
                state.note_position(None);
            }
        }
    }
}

/// Makes sure Redis holds every caught-up partition's pending counts and marks it
/// live under our epoch. A mark that was ours and is gone means Redis lost its data:
/// the counts are rewritten from memory (exact: memory holds everything since the
/// last flush) before the mark is set again, and readers wait for the mark.
pub fn keep_live(shared: &Shared, core: &mut Core) {
    let Some(store) = &shared.pending else {
        return;
    };
    let owned: Vec<i32> = core.partitions.keys().copied().collect();
    let marks = match shared.rt.block_on(store.live_epochs(&owned)) {
        Ok(marks) => marks,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read live marks");
            return;
        }
    };
    for (partition, mark) in owned.into_iter().zip(marks) {
        let Some(state) = core.partitions.get_mut(&partition) else {
            continue;
        };
        if mark == Some(state.epoch) {
            continue;
        }
        if mark.is_some_and(|e| e > state.epoch) {
            tracing::warn!(
                partition,
                "a newer owner marked this partition; dropping it"
            );
            core.partitions.remove(&partition);
            continue;
        }
        if state.marked_live {
            tracing::warn!(
                partition,
                keys = state.pending.len(),
                "Redis lost this partition's pending counts; restoring them from memory"
            );
            metrics::counter!(m::REDIS_RESTORES).increment(1);
            state.marked_live = false;
        }
        if !state.caught_up() {
            continue;
        }
        let last_offset = state.consumed_to.map_or(-1, |c| c - 1);
        let restored = shared.rt.block_on(store.restore(
            partition,
            state.gen,
            state.epoch,
            last_offset,
            &state.pending,
        ));
        match restored {
            Ok(Applied::Flags(_)) => state.marked_live = true,
            Ok(Applied::Stale) => {
                tracing::warn!(partition, "a newer owner wrote this partition; dropping it");
                core.partitions.remove(&partition);
            }
            Err(e) => tracing::warn!(partition, error = %e, "cannot restore pending counts"),
        }
    }
}
