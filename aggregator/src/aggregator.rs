//! The aggregator's core: the partitions it owns, its stores and clients, and the
//! operations the consumer loop and the rebalance callbacks call. The protocol these
//! follow is described in [`crate::flush`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use sea_orm::DatabaseConnection;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use viewpipe_runtime::Shutdown;
use viewpipe_schema::Namespaces;
use viewpipe_store::pending::{Applied, PartitionBatch, TakeOver};
use viewpipe_store::{postgres, Claim, Counts, FlushError, FlushOutcome, Scope};

use crate::batch::{Batch, PartBatch};
use crate::dlq::Dlq;
use crate::flush::{self, FlushUnit};
use crate::metrics as m;
use crate::partition::Partition;
use crate::pending::Pending;
use crate::retry::{retry, Backoff, Until};

/// How often the live marks of idle partitions are checked.
const LIVE_CHECK_EVERY: Duration = Duration::from_millis(200);
/// Past this many unflushed keys the loop stops polling until the flush in flight
/// lands: memory stays bounded (about 100 MiB of counts) when Postgres is slower than
/// the log.
const PENDING_CAP: usize = 500_000;

/// The knobs of counting and flushing.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub flush_interval: Duration,
    pub flush_max_pending: usize,
    /// Revoked partitions are flushed within this (well inside the session timeout)
    /// or abandoned to their next owner.
    pub revoke_deadline: Duration,
}

/// Everything an aggregator owns. The consumer thread drives it: the loop calls
/// [`Aggregator::add`], [`Aggregator::process`], [`Aggregator::drive_flush`] and
/// [`Aggregator::upkeep`]; librdkafka's rebalance callbacks (run inside `poll`, on the
/// same thread) call [`Aggregator::assign`] and [`Aggregator::revoke`].
pub struct Aggregator {
    rt: Handle,
    db: DatabaseConnection,
    scope: Scope,
    pending: Pending,
    dlq: Dlq,
    namespaces: Namespaces,
    shutdown: Shutdown,
    /// The group's newest open flush request (`jobs.seq`, 0 for none), kept current
    /// by a background task.
    requested_flush: Arc<AtomicI64>,
    tuning: Tuning,
    /// Bumped by every assignment and revocation, so the loop can tell messages
    /// polled before a rebalance from those after it.
    rebalances: AtomicU64,
    state: Mutex<State>,
}

/// What changes as the aggregator runs.
struct State {
    partitions: BTreeMap<i32, Partition>,
    batch: Batch,
    /// The previous batch while Redis applies it (overlapping the next poll).
    applying: Option<Applying>,
    /// The flush in flight, or waiting to be retried.
    flush: Option<InFlight>,
    next_flush: Instant,
    next_live_check: Instant,
}

type FlushTask = JoinHandle<Result<FlushOutcome, FlushError>>;

/// A batch sent to Redis, counted in memory once Redis answered.
struct Applying {
    task: JoinHandle<redis::RedisResult<Vec<Applied>>>,
    /// What was sent: each partition's fresh counts.
    batches: Arc<Vec<PartitionBatch>>,
    /// The rest of the batch (counts Redis holds already, ids, invalid messages).
    parts: Vec<(i32, PartBatch)>,
    duplicates: u64,
}

struct InFlight {
    unit: FlushUnit,
    task: Option<FlushTask>,
    started: Instant,
    retry_at: Instant,
    backoff: Backoff,
}

/// Everything [`Aggregator::new`] needs.
pub struct Parts {
    pub rt: Handle,
    pub db: DatabaseConnection,
    pub scope: Scope,
    pub pending: Pending,
    pub dlq: Dlq,
    pub namespaces: Namespaces,
    pub shutdown: Shutdown,
    pub requested_flush: Arc<AtomicI64>,
    pub tuning: Tuning,
}

impl Aggregator {
    pub fn new(parts: Parts) -> Self {
        let next_flush = Instant::now() + parts.tuning.flush_interval;
        Self {
            rt: parts.rt,
            db: parts.db,
            scope: parts.scope,
            pending: parts.pending,
            dlq: parts.dlq,
            namespaces: parts.namespaces,
            shutdown: parts.shutdown,
            requested_flush: parts.requested_flush,
            tuning: parts.tuning,
            rebalances: AtomicU64::new(0),
            state: Mutex::new(State {
                partitions: BTreeMap::new(),
                batch: Batch::default(),
                applying: None,
                flush: None,
                next_flush,
                next_live_check: Instant::now(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock aborts the process anyway; recover the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn topic(&self) -> &str {
        &self.scope.topic
    }

    /// The partitions owned now.
    pub fn owned(&self) -> Vec<i32> {
        self.state().partitions.keys().copied().collect()
    }

    fn requested(&self) -> i64 {
        self.requested_flush.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Claims a partition: in Postgres (new epoch; where to resume) and, with Redis,
    /// fences it there and learns how far its current generation reaches. Retries
    /// until shutdown.
    pub fn claim(&self, partition: i32) -> Option<(Claim, i64)> {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let stopped = || self.stopped();
        let claim = retry(
            "claiming a partition in Postgres",
            backoff,
            Until::Stopped(&stopped),
            || {
                self.rt
                    .block_on(postgres::claim(&self.db, &self.scope, partition))
            },
        )?;
        let taken = retry(
            "fencing a partition in Redis",
            backoff,
            Until::Stopped(&stopped),
            || {
                self.rt.block_on(self.pending.take_over(
                    partition,
                    claim.epoch,
                    claim.flushed_gen + 1,
                ))
            },
        )?;
        let redis_at = match taken {
            TakeOver::Applied(at) => at,
            TakeOver::Stale => {
                tracing::warn!(
                    partition,
                    "a newer owner fenced this partition in Redis already"
                );
                return None;
            }
            TakeOver::Ahead(gen) => {
                tracing::error!(
                    partition,
                    redis_gen = gen,
                    postgres_gen = claim.flushed_gen,
                    "Redis holds generations Postgres never flushed: Postgres went back in time; see docs/exactly-once.md"
                );
                -1
            }
        };
        Some((claim, redis_at))
    }

    /// Takes over the claimed partitions and points the consumer at the offsets
    /// Postgres holds.
    /// `claims` are `(claim, how far Redis holds its generation, log recreated)`.
    pub fn assign<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &mut TopicPartitionList,
        claims: Vec<(Claim, i64, bool)>,
    ) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state();
        self.land(&mut state);
        state.batch.clear();
        for (claim, redis_at, recreated) in &claims {
            // Postgres is the authoritative position; without one, nothing of this
            // partition was ever flushed, so all of it is to be counted.
            let start = claim.next_offset.map_or(Offset::Beginning, Offset::Offset);
            let _ = tpl.set_partition_offset(&self.scope.topic, claim.partition, start);
            let mut partition = Partition::from_claim(claim, *redis_at);
            if *recreated {
                // What Redis holds came from the old log: write memory over it.
                partition.replay_to = None;
                partition.needs_restore = true;
            }
            state.partitions.insert(claim.partition, partition);
        }
        drop(state);
        let partitions: Vec<i32> = claims.iter().map(|(c, _, _)| c.partition).collect();
        tracing::info!(partitions = ?partitions, "partitions assigned");
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
        }
    }

    /// Flushes everything owned within the revoke deadline, commits, and lets the
    /// partitions go. What could not be flushed is re-counted by the next owner.
    pub fn revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + self.tuning.revoke_deadline;
        let owned = self.owned();
        self.flush_all(consumer, deadline, CommitMode::Sync);
        let mut state = self.state();
        state.partitions.clear();
        state.batch.clear();
        state.applying = None;
        state.flush = None;
        metrics::gauge!(m::PENDING_KEYS).set(0.0);
        drop(state);
        if !owned.is_empty() {
            tracing::info!(partitions = ?owned, "partitions revoked");
        }
    }

    /// True while so many keys wait for Postgres that polling should pause.
    pub fn must_wait(&self) -> bool {
        let state = self.state();
        state.flush.is_some()
            && state
                .partitions
                .values()
                .map(Partition::pending_keys)
                .sum::<usize>()
                >= PENDING_CAP
    }

    /// Assignments and revocations so far.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }

    /// Takes one polled message into the batch (dropped when its partition is not
    /// owned or it is a re-delivery).
    pub fn add(&self, partition: i32, offset: i64, payload: Option<&[u8]>, key: Option<&[u8]>) {
        self.add_all(std::iter::once((partition, offset, payload, key)));
    }

    /// [`Aggregator::add`] for several messages, under one lock.
    pub fn add_all<'m>(
        &self,
        messages: impl Iterator<Item = (i32, i64, Option<&'m [u8]>, Option<&'m [u8]>)>,
    ) {
        let mut state = self.state();
        let State {
            partitions, batch, ..
        } = &mut *state;
        for (partition, offset, payload, key) in messages {
            if let Some(owner) = partitions.get(&partition) {
                batch.add(partition, owner, offset, payload, key, &self.namespaces);
            }
        }
    }

    /// Counts the gathered batch: parks invalid messages in the DLQ, decides
    /// client-chosen ids, and sends the sums to Redis without waiting; the previous
    /// batch, whose Redis answer is in by now, is counted in memory first. So Redis
    /// works on one batch while the next is polled.
    pub fn process(&self) {
        let mut state = self.state();
        self.land(&mut state);
        let parts = state.batch.take();
        if parts.is_empty() {
            return;
        }
        let stopped = || self.stopped();
        let mut ready: Vec<(i32, PartBatch)> = Vec::with_capacity(parts.len());
        for (partition, part) in parts {
            if state.partitions.get(&partition).map(|p| p.epoch) != Some(part.epoch) {
                continue; // revoked or re-claimed since it was polled
            }
            if !self.dlq.park(&self.rt, partition, &part.invalid, &stopped) {
                continue; // shutting down; the next owner consumes it again
            }
            ready.push((partition, part));
        }
        let Some(duplicates) = self.decide_ids(&mut ready) else {
            return;
        };
        let mut batches = Vec::with_capacity(ready.len());
        for (partition, part) in &mut ready {
            let (Some(p), Some(last)) = (state.partitions.get(partition), part.last) else {
                continue;
            };
            if part.fresh.is_empty() || p.needs_restore {
                continue; // nothing for Redis, or memory is rewritten there soon
            }
            batches.push(PartitionBatch {
                partition: *partition,
                epoch: p.epoch,
                gen: p.gen,
                prev: p.redis_at,
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

    /// Waits for the batch Redis is applying, records its answers and counts the
    /// batch in memory. A Redis error is retried (the apply is a compare-and-set, so a
    /// batch that got in before the error is not added twice).
    fn land(&self, state: &mut State) {
        let Some(applying) = state.applying.take() else {
            return;
        };
        let stopped = || self.stopped();
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
                let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
                retry(
                    "applying a batch to Redis",
                    backoff,
                    Until::Stopped(&stopped),
                    || self.rt.block_on(self.pending.apply(&batches)),
                )
            }
        };
        let Some(applied) = applied else {
            return; // shutting down: the batch is consumed again by the next owner
        };
        let mut counted = 0;
        for (b, outcome) in batches.into_iter().zip(applied) {
            self.note_applied(&mut state.partitions, &b, outcome);
            if let Some(p) = state
                .partitions
                .get_mut(&b.partition)
                .filter(|p| p.epoch == b.epoch)
            {
                let fresh = Arc::try_unwrap(b.counts).unwrap_or_else(|shared| (*shared).clone());
                counted += fresh.views();
                p.current.absorb(fresh);
            }
        }
        let mut invalid = 0;
        for (partition, part) in applying.parts {
            let Some(p) = state
                .partitions
                .get_mut(&partition)
                .filter(|p| p.epoch == part.epoch)
            else {
                continue;
            };
            let Some(last) = part.last else {
                continue;
            };
            counted += part.fresh.views() + part.replayed.views();
            invalid += part.invalid.len() as u64;
            p.current.absorb(part.fresh);
            p.current.absorb(part.replayed);
            p.consumed(last);
        }
        metrics::counter!(m::EVENTS, "result" => "counted").increment(counted as u64);
        metrics::counter!(m::EVENTS, "result" => "duplicate").increment(applying.duplicates);
        metrics::counter!(m::EVENTS, "result" => "invalid").increment(invalid);
        let pending: usize = state.partitions.values().map(Partition::pending_keys).sum();
        metrics::gauge!(m::PENDING_KEYS).set(pending as f64);
    }

    /// Asks Redis which client-chosen ids are new and moves those events into the
    /// counts; returns the number of duplicates, or `None` when shutting down.
    fn decide_ids(&self, ready: &mut [(i32, PartBatch)]) -> Option<u64> {
        let ids: Vec<(&str, &str, i32, i64)> = ready
            .iter()
            .flat_map(|(p, part)| {
                part.with_ids
                    .iter()
                    .map(move |e| (e.key.as_str(), e.event_id.as_str(), *p, e.offset))
            })
            .collect();
        if ids.is_empty() {
            return Some(0);
        }
        let stopped = || self.stopped();
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let firsts = retry(
            "checking eventIds in Redis",
            backoff,
            Until::Stopped(&stopped),
            || self.rt.block_on(self.pending.first_sightings(&ids)),
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
                counts.add(&e.key, e.day, e.path.as_deref());
            }
        }
        Some(duplicates)
    }

    /// Records what Redis answered to one partition's batch.
    fn note_applied(
        &self,
        partitions: &mut BTreeMap<i32, Partition>,
        b: &PartitionBatch,
        outcome: Applied,
    ) {
        let Some(p) = partitions
            .get_mut(&b.partition)
            .filter(|p| p.epoch == b.epoch)
        else {
            return;
        };
        match outcome {
            Applied::Added { live } => {
                p.redis_at = b.last;
                if !live {
                    self.lost(b.partition, p);
                }
                p.marked_live = live;
            }
            Applied::At(at) if at >= b.last => {
                // In already: a retry after a lost reply, or someone counted further.
                p.redis_at = at;
                if at > b.last {
                    p.replay_to = Some(at);
                }
            }
            Applied::At(at) => {
                tracing::warn!(
                    partition = b.partition,
                    redis_at = at,
                    expected = b.prev,
                    "Redis holds less of this partition than was written to it; restoring it from memory"
                );
                self.lost(b.partition, p);
            }
            Applied::Stale => {
                tracing::warn!(partition = b.partition, "a newer owner wrote this partition in Redis; dropping it (its owner counts it)");
                partitions.remove(&b.partition);
            }
        }
    }

    /// Redis lost (part of) a partition's pending counts: rewrite them from memory.
    fn lost(&self, partition: i32, p: &mut Partition) {
        if p.marked_live {
            tracing::warn!(
                partition,
                keys = p.pending_keys(),
                "Redis lost this partition's pending counts; restoring them from memory"
            );
            metrics::counter!(m::REDIS_RESTORES).increment(1);
        }
        p.marked_live = false;
        p.needs_restore = true;
    }

    /// Finishes a flush in flight, and starts one when it is due. Never blocks on
    /// Postgres: flushes run in the background.
    pub fn drive_flush<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut state = self.state();
        if let Some(Some(offsets)) = self.finish_flush(&mut state, None) {
            let _ = consumer.commit(&offsets, CommitMode::Async);
        }
        if state.flush.is_some() {
            return;
        }
        let requested = self.requested();
        let pending: usize = state.partitions.values().map(Partition::pending_keys).sum();
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

    fn start_flush(&self, unit: FlushUnit) -> InFlight {
        let task = self.spawn_flush(&unit);
        InFlight {
            unit,
            task: Some(task),
            started: Instant::now(),
            retry_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    fn spawn_flush(&self, unit: &FlushUnit) -> FlushTask {
        let (db, scope, unit) = (self.db.clone(), self.scope.clone(), unit.clone());
        self.rt.spawn(async move {
            let counts: Vec<&Counts> = unit
                .parts
                .iter()
                .filter_map(|p| p.counts.as_deref())
                .collect();
            let commits: Vec<_> = unit.parts.iter().map(|p| p.commit.clone()).collect();
            postgres::flush(&db, &scope, &counts, &commits).await
        })
    }

    /// Handles the flush in flight if it finished (or, with `wait_until`, once it
    /// finishes before then); returns the Kafka offsets to commit after a successful
    /// one. Retries a failed flush as it was once its backoff passed.
    fn finish_flush(
        &self,
        state: &mut State,
        wait_until: Option<Instant>,
    ) -> Option<Option<TopicPartitionList>> {
        let flight = state.flush.as_mut()?;
        let Some(task) = flight.task.as_mut() else {
            if Instant::now() >= flight.retry_at {
                flight.task = Some(self.spawn_flush(&flight.unit));
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
            Err(FlushError::Fenced(fenced)) => {
                tracing::warn!(
                    partitions = ?fenced,
                    "partitions were taken over by another aggregator; dropping their unflushed counts (the new owner re-counts them)"
                );
                for p in &fenced {
                    state.partitions.remove(p);
                }
                let owned: Vec<i32> = state.partitions.keys().copied().collect();
                if let Some(flight) = state.flush.as_mut() {
                    flight.unit.retain_partitions(|p| owned.contains(&p));
                    if flight.unit.is_empty() {
                        state.flush = None;
                    }
                }
                None
            }
            Err(e) => {
                let wait = flight.backoff.next_wait();
                flight.retry_at = Instant::now() + wait;
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "flush failed; retrying it as it was");
                None
            }
        }
    }

    /// Flushes everything (the flush in flight first), retrying until `deadline`, and
    /// commits the offsets.
    fn flush_all<C: ConsumerContext>(
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
                            tracing::warn!(
                                partition,
                                "a newer owner marked this partition; dropping it"
                            );
                            state.partitions.remove(&partition);
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
            self.restore(&mut state.partitions, partition);
        }
    }

    /// Rewrites a partition's unflushed generations from memory and marks it live.
    fn restore(&self, partitions: &mut BTreeMap<i32, Partition>, partition: i32) {
        let Some(p) = partitions.get_mut(&partition) else {
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
                    tracing::warn!(
                        partition,
                        "a newer owner wrote this partition in Redis; dropping it"
                    );
                    partitions.remove(&partition);
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

    /// The final flush at shutdown, then the offsets commit.
    pub fn finish<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, within: Duration) {
        self.process();
        self.land(&mut self.state());
        self.flush_all(consumer, Instant::now() + within, CommitMode::Sync);
        let mut state = self.state();
        state.partitions.clear();
        state.batch.clear();
    }
}
