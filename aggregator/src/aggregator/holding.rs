//! Held partitions: assigned to us by Kafka, but not ours to write. Either another
//! aggregator claimed them since (the group's rebalance normally follows), or
//! Postgres went back in time and holds less than we and Redis know was flushed. A
//! held partition is paused in Kafka, so nothing of it is polled and nothing is
//! skipped; it is reported (log, `viewpipe_aggregator_held_partitions`, `/readyz`
//! when Postgres went back) and claimed again every [`HOLD_RETRY`] until a claim
//! succeeds (once the operator has made the stores agree, see
//! `docs/exactly-once.md`).

use super::*;
use crate::protocol::Fence;

/// How often a held partition is claimed again.
pub(crate) const HOLD_RETRY: Duration = Duration::from_secs(5);

/// Why a partition is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Another aggregator claimed it after us.
    Fenced,
    /// Postgres holds an older state than we or Redis know was flushed.
    Behind,
    /// The log no longer holds the partition's position: retention deleted events
    /// before they were counted.
    LogAhead,
    /// The log lost or replaced messages that were counted (see `log_check`).
    LogTruncated,
    /// The log does not reach far enough yet to tell whether it is the log that was
    /// counted (a recreated topic, still empty); looked at again, not reported.
    LogUnproven,
}

impl Hold {
    pub(crate) const ALL: [Hold; 5] = [
        Hold::Fenced,
        Hold::Behind,
        Hold::LogAhead,
        Hold::LogTruncated,
        Hold::LogUnproven,
    ];

    /// The `reason` label of `viewpipe_aggregator_held_partitions`.
    pub fn label(self) -> &'static str {
        match self {
            Hold::Fenced => "fenced",
            Hold::Behind => "postgres_behind",
            Hold::LogAhead => "log_ahead",
            Hold::LogTruncated => "log_truncated",
            Hold::LogUnproven => "log_unproven",
        }
    }
}

pub(super) struct Held {
    reason: Hold,
    paused: bool,
    retry_at: Instant,
}

/// The outcome of claiming a partition.
pub enum Claimed {
    /// Ours: where Postgres resumes it, and what fencing it in Redis found
    /// (`Fence::NoAnswer`: it is fenced later).
    Owned(Claim, Fence),
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
            Hold::LogAhead => tracing::error!(
                partition,
                "THE LOG NO LONGER HOLDS THIS PARTITION'S POSITION: retention deleted events before they were counted. Holding the partition, nothing skipped; see docs/exactly-once.md, \"The log running ahead\""
            ),
            Hold::LogTruncated => tracing::error!(
                partition,
                "THE LOG LOST OR REPLACED EVENTS THAT WERE COUNTED: it no longer holds the last counted message, but still the first (an unclean leader election, or a restored broker). Which of its events are new cannot be told; holding the partition, nothing skipped or counted twice; see docs/exactly-once.md, \"The log losing its tail\""
            ),
            Hold::LogUnproven => tracing::info!(
                partition,
                "the log does not hold the last counted message nor reach the first yet (a recreated topic, still empty?); looking again every few seconds"
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
        for reason in Hold::ALL {
            let n = state.held.values().filter(|h| h.reason == reason).count();
            metrics::gauge!(m::HELD_PARTITIONS, "reason" => reason.label()).set(n as f64);
        }
        // Reported on `/readyz` under the metric's reason label.
        let faults = [
            (Hold::Behind, "Postgres holds less than was flushed"),
            (
                Hold::LogAhead,
                "the log starts after their position in Postgres",
            ),
            (
                Hold::LogTruncated,
                "the log lost or replaced events that were counted",
            ),
        ];
        for (reason, what) in faults {
            let held: Vec<i32> = state
                .held
                .iter()
                .filter(|(_, h)| h.reason == reason)
                .map(|(p, _)| *p)
                .collect();
            let detail = (!held.is_empty())
                .then(|| format!("partitions {held:?} held: {what}; see docs/exactly-once.md"));
            self.health.set_fault(reason.label(), detail);
        }
    }

    /// Points the consumer at every owned partition's position again (a seek is
    /// refused for a partition whose fetching stopped on an error; an assignment
    /// is not), and pauses the held ones.
    fn reassign<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, state: &mut State) {
        // Messages polled before this belong to the old positions.
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        self.land(state);
        let topic = &self.scope.topic;
        let mut tpl = TopicPartitionList::new();
        for (partition, p) in &state.partitions {
            let start = p
                .core
                .consumed_to()
                .map_or(Offset::Beginning, Offset::Offset);
            let _ = tpl.add_partition_offset(topic, *partition, start);
        }
        for (partition, held) in state.held.iter_mut() {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::End);
            held.paused = false;
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::error!(error = %e, "re-assigning the partitions failed");
        }
        // A pause outlives the assignment: resume what is ours, pause what is held.
        let mut owned = TopicPartitionList::new();
        for partition in state.partitions.keys() {
            owned.add_partition(topic, *partition);
        }
        if let Err(e) = consumer.resume(&owned) {
            tracing::warn!(error = %e, "cannot resume the owned partitions");
        }
        self.pause_new(consumer, state);
    }

    /// After librdkafka found a position out of range: holds every owned partition
    /// whose position is now outside its log: before its start (events deleted
    /// uncounted), or past its end (the log was truncated or recreated: the claim
    /// tried again every few seconds tells which).
    pub(crate) fn check_positions<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut state = self.state();
        let owned: Vec<(i32, i64)> = state
            .partitions
            .iter()
            .map(|(n, p)| (*n, p.core.consumed_to().unwrap_or(0)))
            .collect();
        for (partition, position) in owned {
            if self.log_starts_after(partition, position) {
                self.hold(&mut state, partition, Hold::LogAhead);
            } else if self
                .probe
                .bounds(partition)
                .is_ok_and(|(_, high)| high < position)
            {
                tracing::warn!(
                    partition,
                    position,
                    "the log now ends before this partition's position"
                );
                self.hold(&mut state, partition, Hold::LogUnproven);
            }
        }
        self.pause_new(consumer, &mut state);
    }

    /// Judges the log a claim resumes (see `log_check`): `Ok(Some(position))` when it
    /// is a new log, to be counted from its beginning (the claim then starts there;
    /// `position` is the old log's, which the row holds), `Err` when the partition
    /// must be held.
    pub(crate) fn check_log(&self, claim: &mut Claim) -> Result<Option<i64>, Hold> {
        match self.probe.check(claim) {
            Verdict::Same => Ok(None),
            Verdict::Recreated => {
                tracing::warn!(
                    partition = claim.partition,
                    postgres_position = claim.next_offset,
                    "the partition's log is not the one Postgres' position belongs to (the topic was created again): counting it from its beginning"
                );
                Ok(claim.next_offset.take())
            }
            Verdict::Truncated => Err(Hold::LogTruncated),
            Verdict::Unproven => Err(Hold::LogUnproven),
            Verdict::Ahead => Err(Hold::LogAhead),
        }
    }

    fn log_starts_after(&self, partition: i32, position: i64) -> bool {
        match self.probe.bounds(partition) {
            Ok((low, _)) if low > position => {
                tracing::error!(
                    partition,
                    position,
                    log_start = low,
                    lost = low - position,
                    "events deleted from the log before they were counted"
                );
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot read the partition's log start");
                false
            }
        }
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
    pub(crate) fn tend_held<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
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
                Claimed::Owned(mut claim, fence) => match self.check_log(&mut claim) {
                    Ok(replaced) => {
                        state.held.remove(&partition);
                        state
                            .partitions
                            .insert(partition, owned(&claim, fence, replaced));
                        self.reassign(consumer, &mut state);
                        tracing::info!(partition, "held partition claimed again; counting it from the position Postgres holds");
                    }
                    Err(reason) => {
                        if let Some(held) = state.held.get_mut(&partition) {
                            held.reason = reason;
                            held.retry_at = Instant::now() + HOLD_RETRY;
                        }
                    }
                },
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
