//! Flushing: sealing generations and writing them to Postgres in the background.

use super::*;

impl Aggregator {
    /// Finishes a flush in flight, and starts one when it is due. Never blocks on
    /// Postgres: flushes run in the background.
    pub(crate) fn drive_flush<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut state = self.state();
        if let Some(Some(offsets)) = self.finish_flush(&mut state, None) {
            let _ = consumer.commit(&offsets, CommitMode::Async);
        }
        if let Some(flight) = &state.flush {
            let waited = flight.started.elapsed();
            if flight.task.is_some() && waited >= FLUSH_SLOW {
                // Renewed every turn while it lasts, so it lapses soon after.
                self.health.set_fault_for(
                    SILENT_FAULT,
                    format!("a flush has waited {} s for Postgres", waited.as_secs()),
                    Duration::from_secs(2),
                );
            }
            return;
        }
        let requested = self.requested();
        // Partitions not caught up cannot be flushed: their keys must not make every
        // turn of the loop "due".
        let pending: usize = state
            .partitions
            .values()
            .filter(|p| p.core.caught_up())
            .map(|p| p.core.pending_keys())
            .sum();
        let due = !self.pending.is_redis()
            || Instant::now() >= state.next_flush
            || pending >= self.tuning.flush_max_pending
            || flush::answers_pending(&state.partitions, requested);
        if !due {
            return;
        }
        state.next_flush = Instant::now() + self.tuning.flush_interval;
        // Sealing moves counting to the next generation: the batch Redis is applying
        // to this one must be counted in it first.
        self.land(&mut state);
        let unit = flush::seal(&mut state.partitions, requested);
        if !unit.is_empty() {
            state.flush = Some(self.start_flush(unit));
        }
    }

    pub(super) fn start_flush(&self, unit: FlushUnit) -> InFlight {
        // A large generation (a backlog caught up while the previous flush ran) takes
        // Postgres longer: it gets time for its rows on top, so that only a silent
        // connection runs into the deadline.
        let keys: usize = unit
            .parts
            .iter()
            .filter_map(|p| p.counts.as_deref())
            .map(Counts::len)
            .sum();
        let deadline =
            FLUSH_DEADLINE + FLUSH_TIME_PER_KEY * u32::try_from(keys).unwrap_or(u32::MAX);
        let task = self.spawn_flush(&unit, deadline);
        InFlight {
            unit,
            task: Some(task),
            started: Instant::now(),
            retry_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            deadline,
        }
    }

    /// Runs the flush's transaction in the background; an attempt that hears nothing
    /// within `deadline` ends as a cut connection would, and is retried as it was.
    fn spawn_flush(&self, unit: &FlushUnit, deadline: Duration) -> FlushTask {
        let (db, scope, unit) = (self.db.clone(), self.scope.clone(), unit.clone());
        self.rt.spawn(async move {
            let counts: Vec<&Counts> = unit
                .parts
                .iter()
                .filter_map(|p| p.counts.as_deref())
                .collect();
            let commits: Vec<_> = unit.parts.iter().map(|p| p.commit.clone()).collect();
            deadline::within(deadline, postgres::flush(&db, &scope, &counts, &commits)).await
        })
    }

    /// Reports on `/readyz` that Postgres left a round trip unanswered; the report
    /// lasts [`SILENT_FAULT_FOR`] unless a flush succeeds first.
    pub(super) fn silent_postgres(&self, what: &str) {
        self.health.set_fault_for(
            SILENT_FAULT,
            format!("{what} got no answer in time; retrying on a new connection"),
            SILENT_FAULT_FOR,
        );
    }

    /// Handles the flush in flight if it finished (or, with `wait_until`, once it
    /// finishes before then); returns the Kafka offsets to commit after a successful
    /// one. Retries a failed flush as it was once its backoff passed.
    pub(super) fn finish_flush(
        &self,
        state: &mut State,
        wait_until: Option<Instant>,
    ) -> Option<Option<TopicPartitionList>> {
        let flight = state.flush.as_mut()?;
        let Some(task) = flight.task.as_mut() else {
            if Instant::now() >= flight.retry_at {
                flight.task = Some(self.spawn_flush(&flight.unit, flight.deadline));
                flight.started = Instant::now();
            }
            return None;
        };
        let result = match wait_until {
            None if !task.is_finished() => return None,
            None => self.rt.block_on(task),
            Some(deadline) => {
                // The timer must be made inside the runtime: this is the consumer thread.
                let waited = self
                    .rt
                    .block_on(async { tokio::time::timeout_at(deadline.into(), task).await });
                match waited {
                    Ok(result) => result,
                    Err(_) => return None, // still running; left to finish or be fenced
                }
            }
        };
        flight.task = None;
        let result = result.unwrap_or_else(|e| {
            Err(FlushError::Db(sea_orm::DbErr::Custom(format!(
                "flush task: {e}"
            ))))
        });
        match result {
            Ok(outcome) => {
                let flight = state.flush.take()?;
                self.health.set_fault(SILENT_FAULT, None);
                if outcome.already_committed {
                    tracing::info!("the flush had committed already (its reply was lost); nothing written twice");
                }
                flush::flushed(&mut state.partitions, &flight.unit);
                metrics::histogram!(m::FLUSH_DURATION)
                    .record(flight.started.elapsed().as_secs_f64());
                metrics::counter!(m::FLUSHED_ROWS).increment(outcome.rows());
                metrics::gauge!(m::LAST_FLUSH).set(chrono::Utc::now().timestamp() as f64);
                let mut offsets = TopicPartitionList::new();
                for c in flight.unit.sealing() {
                    let _ = offsets.add_partition_offset(
                        &self.scope.topic,
                        c.partition,
                        Offset::Offset(c.next_offset),
                    );
                    let (pending, partition, gen) = (self.pending.clone(), c.partition, c.gen);
                    self.rt
                        .spawn(async move { pending.drop_generation(partition, gen).await });
                }
                tracing::debug!(
                    partitions = flight.unit.parts.len(),
                    rows = outcome.rows(),
                    "flushed"
                );
                Some(Some(offsets))
            }
            Err(FlushError::Fenced(lost)) => {
                self.drop_from_flush(state, &lost, Hold::Fenced);
                None
            }
            Err(FlushError::Behind(lost)) => {
                self.drop_from_flush(state, &lost, Hold::Behind);
                None
            }
            Err(FlushError::Diverged { partition, .. }) => {
                self.drop_from_flush(state, &[partition], Hold::Behind);
                None
            }
            Err(e) => {
                let wait = flight.backoff.next_wait();
                flight.retry_at = Instant::now() + wait;
                if matches!(&e, FlushError::Db(db) if deadline::is_silent(db)) {
                    flight.deadline =
                        (flight.deadline * 2).min(FLUSH_DEADLINE_MAX.max(flight.deadline));
                    self.silent_postgres("a flush");
                }
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "flush failed; retrying it as it was");
                None
            }
        }
    }

    /// Holds partitions a flush may not write (their unflushed counts are dropped:
    /// whoever owns them next counts them again from Postgres' position) and goes on
    /// flushing the others.
    fn drop_from_flush(&self, state: &mut State, lost: &[i32], reason: Hold) {
        let mut lost = lost.to_vec();
        if reason == Hold::Behind {
            // Postgres seldom goes back for one partition: a restore or a failover
            // takes the whole database back. Every partition is held before any of
            // them writes Redis again (an owner restoring Redis from memory after the
            // operator's `reset-pending` would put Redis ahead of Postgres again).
            lost.extend(
                state
                    .partitions
                    .keys()
                    .filter(|p| !lost.contains(p))
                    .copied()
                    .collect::<Vec<_>>(),
            );
        }
        for p in &lost {
            self.hold(state, *p, reason);
        }
        let owned: Vec<i32> = state.partitions.keys().copied().collect();
        if let Some(flight) = state.flush.as_mut() {
            flight.unit.retain_partitions(|p| owned.contains(&p));
            if flight.unit.is_empty() {
                state.flush = None;
            }
        }
    }

    /// Flushes everything (the flush in flight first), retrying until `deadline`, and
    /// commits the offsets.
    pub(super) fn flush_all<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        deadline: Instant,
        mode: CommitMode,
    ) {
        let mut state = self.state();
        self.land(&mut state);
        let mut offsets = TopicPartitionList::new();
        loop {
            if state.flush.is_none() {
                let unit = flush::seal(&mut state.partitions, self.requested());
                if unit.is_empty() {
                    break;
                }
                state.flush = Some(self.start_flush(unit));
            }
            if let Some(flight) = state.flush.as_mut() {
                if flight.task.is_none() {
                    let retry_at = flight.retry_at.min(deadline);
                    std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
                }
            }
            if let Some(Some(done)) = self.finish_flush(&mut state, Some(deadline)) {
                for e in done.elements() {
                    let _ = offsets.add_partition_offset(e.topic(), e.partition(), e.offset());
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "could not flush everything in time; the next owner re-counts the rest"
                );
                break;
            }
        }
        if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, mode) {
                tracing::warn!(error = %e, "offset commit failed (Postgres holds the position)");
            }
        }
    }
}
