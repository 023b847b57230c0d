//! Held partitions: assigned to us by Kafka, but not ours to write. Either another
//! aggregator claimed them since (the group's rebalance normally follows), or
//! Postgres went back in time and holds less than we and Redis know was flushed. A
//! held partition is paused in Kafka, so nothing of it is polled and nothing is
//! skipped; it is reported (log, `viewpipe_aggregator_held_partitions`, `/readyz`
//! when Postgres went back) and claimed again every [`HOLD_RETRY`] until a claim
//! succeeds (once the operator has made the stores agree, see
//! `docs/exactly-once.md`).

use super::*;

/// How often a held partition is claimed again.
pub const HOLD_RETRY: Duration = Duration::from_secs(5);

/// Why a partition is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Another aggregator claimed it after us.
    Fenced,
    /// Postgres holds an older state than we or Redis know was flushed.
    Behind,
}

pub(super) struct Held {
    reason: Hold,
    paused: bool,
    retry_at: Instant,
}

/// The outcome of claiming a partition.
pub enum Claimed {
    /// Ours: where Postgres resumes it, and how far Redis holds its generation
    /// (`None`: Redis did not answer; it is fenced later).
    Owned(Claim, Option<i64>),
    Held(Hold),
    /// Shutting down.
    Stopped,
}

impl Aggregator {
    /// Stops writing `partition`: drops what memory holds of it (it is counted
    /// again from Postgres' position once claimed) and holds it.
    pub(super) fn hold(&self, state: &mut State, partition: i32, reason: Hold) {
        state.partitions.remove(&partition);
        match reason {
            Hold::Fenced => tracing::warn!(
                partition,
                "another aggregator claimed this partition; holding it (paused) until the group moves it or it is ours again"
            ),
            Hold::Behind => tracing::error!(
                partition,
                "POSTGRES WENT BACK IN TIME for this partition: it holds an older claim or fewer flushes than this aggregator and Redis know of (a restore, a failover to a lagging replica, deleted rows, or another deployment sharing this Redis prefix). Holding the partition, nothing skipped; see docs/exactly-once.md, \"Postgres going back\""
            ),
        }
        state.held.insert(
            partition,
            Held {
                reason,
                paused: false,
                retry_at: Instant::now() + HOLD_RETRY,
            },
        );
        self.report_held(state);
    }

    pub(super) fn report_held(&self, state: &State) {
        metrics::gauge!(m::HELD_PARTITIONS).set(state.held.len() as f64);
        let behind: Vec<i32> = state
            .held
            .iter()
            .filter(|(_, h)| h.reason == Hold::Behind)
            .map(|(p, _)| *p)
            .collect();
        let detail = (!behind.is_empty()).then(|| {
            format!(
                "partitions {behind:?} held: Postgres holds less than was flushed; see docs/exactly-once.md"
            )
        });
        self.health.set_fault("postgres_behind", detail);
    }

    /// Holds the partitions a rebalance assigned but that could not be claimed.
    pub(super) fn hold_assigned<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        held: &[(i32, Hold)],
    ) {
        if held.is_empty() {
            return;
        }
        let mut state = self.state();
        for (partition, reason) in held {
            self.hold(&mut state, *partition, *reason);
        }
        self.pause_new(consumer, &mut state);
    }

    fn pause_new<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, state: &mut State) {
        let mut pause = TopicPartitionList::new();
        for (partition, held) in state.held.iter_mut().filter(|(_, h)| !h.paused) {
            pause.add_partition(&self.scope.topic, *partition);
            held.paused = true;
        }
        if pause.count() > 0 {
            if let Err(e) = consumer.pause(&pause) {
                tracing::warn!(error = %e, "cannot pause held partitions");
            }
        }
    }

    /// Pauses newly held partitions and claims those due again; a partition claimed
    /// is resumed from the position Postgres holds.
    pub fn tend_held<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut state = self.state();
        if state.held.is_empty() {
            return;
        }
        self.pause_new(consumer, &mut state);
        let now = Instant::now();
        let due: Vec<i32> = state
            .held
            .iter()
            .filter(|(_, h)| h.retry_at <= now)
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            match self.claim(partition, Duration::ZERO) {
                Claimed::Owned(claim, redis_at) => {
                    self.rebalances.fetch_add(1, Ordering::SeqCst);
                    let start = claim.next_offset.map_or(Offset::Beginning, Offset::Offset);
                    state.held.remove(&partition);
                    state
                        .partitions
                        .insert(partition, Partition::from_claim(&claim, redis_at));
                    let mut tpl = TopicPartitionList::new();
                    let _ = tpl.add_partition_offset(&self.scope.topic, partition, start);
                    if let Err(e) = consumer.seek_partitions(tpl.clone(), Duration::from_secs(5)) {
                        tracing::warn!(partition, error = %e, "cannot seek a claimed partition");
                    }
                    if let Err(e) = consumer.resume(&tpl) {
                        tracing::warn!(partition, error = %e, "cannot resume a claimed partition");
                    }
                    tracing::info!(partition, "held partition claimed again; counting it from the position Postgres holds");
                }
                Claimed::Held(reason) => {
                    if let Some(held) = state.held.get_mut(&partition) {
                        held.reason = reason;
                        held.retry_at = Instant::now() + HOLD_RETRY;
                    }
                }
                Claimed::Stopped => return,
            }
        }
        self.report_held(&state);
    }
}
