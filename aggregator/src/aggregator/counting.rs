//! Counting a batch: the DLQ, client ids, Redis (overlapping the next poll), memory.

use crate::event_ids::{self, Sighting};

use super::*;

impl Aggregator {
    /// Counts the gathered batch: parks invalid messages in the DLQ, decides
    /// client-chosen ids, and sends the sums to Redis without waiting; the previous
    /// batch, whose Redis answer is in by now, is counted in memory first. So Redis
    /// works on one batch while the next is polled.
    pub fn process(&self) {
        let mut state = self.state();
        self.land(&mut state);
        // A batch whose client ids Postgres could not decide is taken up again first;
        // nothing was polled after it (see `must_wait`).
        let mut ready = match state.undecided.take() {
            Some(ready) => ready,
            None => self.take_batch(&mut state),
        };
        if ready.is_empty() {
            return;
        }
        let Some(duplicates) = self.decide_ids(&mut ready) else {
            if !self.stopped() {
                state.undecided = Some(ready);
            }
            return;
        };
        let mut batches = Vec::with_capacity(ready.len());
        for (partition, part) in &mut ready {
            let (Some(p), Some(last)) = (state.partitions.get(partition), part.last) else {
                continue;
            };
            // Nothing for Redis, or memory is written there later.
            let Some(prev) = p.core.redis_prev().filter(|_| !part.fresh.is_empty()) else {
                continue;
            };
            batches.push(PartitionBatch {
                partition: *partition,
                epoch: p.epoch(),
                token: p.owner().token,
                gen: p.core.gen(),
                prev,
                last,
                live: true,
                counts: Arc::new(std::mem::take(&mut part.fresh)),
            });
        }
        let batches = Arc::new(batches);
        let (pending, sent) = (self.pending.clone(), batches.clone());
        state.applying = Some(Applying {
            task: self.rt.spawn(async move { pending.apply(&sent).await }),
            batches,
            parts: ready,
            duplicates,
        });
    }

    /// The gathered batch, without partitions revoked or re-claimed since it was
    /// polled, its invalid messages parked in the DLQ.
    fn take_batch(&self, state: &mut State) -> Vec<(i32, PartBatch)> {
        let parts = state.batch.take();
        let stopped = || self.stopped();
        let mut ready: Vec<(i32, PartBatch)> = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            if state.partitions.get(&partition).map(Partition::epoch) != Some(part.epoch) {
                continue; // revoked or re-claimed since it was polled
            }
            if !self.dlq.park(&self.rt, partition, &part.invalid, &stopped) {
                continue; // shutting down; the next owner consumes it again
            }
            ready.push((partition, part));
        }
        ready
    }

    /// Waits for the batch Redis is applying, records its answers and counts the
    /// batch in memory. A Redis error is retried for a while (the apply is a
    /// compare-and-set, so a batch that got in before the error is not added twice);
    /// if Redis stays away the batch is counted in memory alone and its partitions are
    /// rewritten into Redis once it is back. Flushing never waits for Redis.
    pub(super) fn land(&self, state: &mut State) {
        let Some(applying) = state.applying.take() else {
            return;
        };
        let first = self.rt.block_on(applying.task).unwrap_or_else(|e| {
            Err(redis::RedisError::from(std::io::Error::other(
                e.to_string(),
            )))
        });
        let batches: Vec<PartitionBatch> =
            Arc::try_unwrap(applying.batches).unwrap_or_else(|shared| (*shared).clone());
        let applied = match first {
            Ok(applied) => Some(applied),
            Err(e) => {
                tracing::warn!(error = %e, "applying a batch to Redis failed; retrying");
                let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
                retry(
                    "applying a batch to Redis",
                    backoff,
                    Until::Deadline(Instant::now() + STORE_PATIENCE),
                    || self.rt.block_on(self.pending.apply(&batches)),
                )
            }
        };
        if applied.is_none() && self.stopped() {
            return; // shutting down: the batch is consumed again by the next owner
        }
        let mut counted = 0;
        let mut outcomes = applied.map(Vec::into_iter);
        if outcomes.is_none() {
            tracing::warn!(
                "Redis is unavailable: counting in memory; the partitions are rewritten into Redis when it answers again"
            );
        }
        for b in batches {
            let outcome = outcomes.as_mut().and_then(Iterator::next);
            let Some(p) = state
                .partitions
                .get_mut(&b.partition)
                .filter(|p| p.epoch() == b.epoch)
            else {
                continue;
            };
            let step = match outcome {
                Some(outcome) => p.core.applied(b.last, outcome),
                None => p.core.unanswered(),
            };
            let fresh = Arc::try_unwrap(b.counts).unwrap_or_else(|shared| (*shared).clone());
            counted += fresh.views();
            p.core.count(fresh);
            self.follow(state, b.partition, step);
        }
        let mut invalid = 0;
        for (partition, part) in applying.parts {
            let Some(p) = state
                .partitions
                .get_mut(&partition)
                .filter(|p| p.epoch() == part.epoch)
            else {
                continue;
            };
            let Some(last) = part.last else {
                continue;
            };
            counted += part.fresh.views() + part.replayed.views();
            invalid += part.invalid.len() as u64;
            p.core.count(part.fresh);
            p.core.count(part.replayed);
            p.consumed(last, part.last_mark, part.first);
            p.event_clock = p.event_clock.max(part.latest);
        }
        metrics::counter!(m::EVENTS, "result" => "counted").increment(counted as u64);
        metrics::counter!(m::EVENTS, "result" => "duplicate").increment(applying.duplicates);
        metrics::counter!(m::EVENTS, "result" => "invalid").increment(invalid);
        let pending: usize = state
            .partitions
            .values()
            .map(|p| p.core.pending_keys())
            .sum();
        metrics::gauge!(m::PENDING_KEYS).set(pending as f64);
    }

    /// Asks Postgres which client-chosen ids are new and moves those events into the
    /// counts; returns the number of duplicates, or `None` when Postgres did not
    /// answer in time (asking again is safe: an id remembers the message that set it).
    fn decide_ids(&self, ready: &mut [(i32, PartBatch)]) -> Option<u64> {
        let topic = &self.scope.topic;
        let ids: Vec<Sighting<'_>> = ready
            .iter()
            .flat_map(|(p, part)| {
                part.with_ids.iter().map(move |e| Sighting {
                    key: e.key.as_str(),
                    event_id: e.event_id.as_str(),
                    message: format!("{topic}:{p}:{}", e.offset),
                    occurred_at: e.occurred_at,
                })
            })
            .collect();
        if ids.is_empty() {
            return Some(0);
        }
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        let until = Instant::now() + STORE_PATIENCE;
        let firsts = retry(
            "checking eventIds in Postgres",
            backoff,
            Until::Deadline(until),
            || {
                // A silent connection must not hold the consumer thread for good;
                // a slow Postgres must still get its answers through.
                let limit = Duration::from_millis(self.ids_deadline_ms.load(Ordering::Relaxed));
                let decided = event_ids::first_sightings(&self.db, &ids);
                let answer = self.rt.block_on(deadline::within(limit, decided));
                match &answer {
                    Err(e) if deadline::is_silent(e) => {
                        self.silent_postgres("deciding eventIds");
                        let longer = (limit * 2).min(Duration::from_secs(60));
                        self.ids_deadline_ms
                            .store(longer.as_millis() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {}
                    Ok(_) => self
                        .ids_deadline_ms
                        .store(deadline::ROUND_TRIP.as_millis() as u64, Ordering::Relaxed),
                }
                answer
            },
        )?;
        drop(ids);
        let mut firsts = firsts.into_iter();
        let mut duplicates = 0;
        for (_, part) in ready.iter_mut() {
            for e in std::mem::take(&mut part.with_ids) {
                if !firsts.next().unwrap_or(true) {
                    duplicates += 1;
                    continue;
                }
                let counts = if e.replayed {
                    &mut part.replayed
                } else {
                    &mut part.fresh
                };
                counts.add_view(&e.key, e.day, e.path.as_deref(), e.visitor);
            }
        }
        Some(duplicates)
    }

    /// Does what the core asked after a transition of `partition`.
    pub(super) fn follow(&self, state: &mut State, partition: i32, step: Step) {
        match step {
            Step::Go => {}
            Step::Restore { was_live } => {
                if was_live {
                    let keys = state
                        .partitions
                        .get(&partition)
                        .map_or(0, |p| p.core.pending_keys());
                    tracing::warn!(
                        partition,
                        keys,
                        "Redis lost this partition's pending counts; restoring them from memory"
                    );
                    metrics::counter!(m::REDIS_RESTORES).increment(1);
                }
            }
            Step::Fenced => self.hold(state, partition, Hold::Fenced),
        }
    }
}
