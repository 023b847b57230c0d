//! The aggregator's core: the partitions it owns, its stores and clients, and the
//! operations the consumer loop and the rebalance callbacks call. The protocol these
//! follow is described in [`crate::flush`].
//!
//! - this module: the type, assigning, taking polled messages;
//! - [`claiming`]: claiming a partition in Postgres and fencing it in Redis;
//! - [`counting`]: a batch into Redis and memory;
//! - [`flushing`]: sealing generations and flushing them in the background;
//! - [`upkeep`]: live marks, and restoring what Redis lost;
//! - [`holding`]: partitions assigned to us that we may not write.

mod claiming;
mod counting;
mod flushing;
mod holding;
mod upkeep;

use claiming::Fencing;
use holding::Held;
pub(crate) use holding::HOLD_RETRY;
pub use holding::{Claimed, Hold};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use sea_orm::DatabaseConnection;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::store::pending::{Applied, PartitionBatch, TakeOver};
use viewpipe_runtime::deadline;
use viewpipe_runtime::{Health, Shutdown};

use crate::store::{postgres, Claim, Counts, FlushError, FlushOutcome, Scope};

use crate::batch::{Batch, PartBatch, Polled};
use crate::dlq::Dlq;
use crate::flush::{self, FlushUnit};
use crate::log_check::{LogProbe, Verdict};
use crate::metrics as m;
use crate::partition::Partition;
use crate::protocol::{self, Step};
use crate::retry::{retry, Backoff, Until};
use crate::store::pending::Pending;

/// How often the live marks of idle partitions are checked.
const LIVE_CHECK_EVERY: Duration = Duration::from_millis(200);
/// Past this many unflushed keys the loop stops polling until the flush in flight
/// lands: memory stays bounded (about 100 MiB of counts) when Postgres is slower than
/// the log.
const PENDING_CAP: usize = 500_000;
/// How long a batch waits for a store: Redis, before the batch is counted in memory
/// alone; Postgres deciding its client ids, before it is set aside (polling paused)
/// until Postgres answers.
pub(crate) const STORE_PATIENCE: Duration = Duration::from_secs(1);

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
    shutdown: Shutdown,
    health: Health,
    /// The group's newest open flush request (`jobs.seq`, 0 for none), kept current
    /// by a background task.
    requested_flush: Arc<AtomicI64>,
    tuning: Tuning,
    /// Reads single messages for the log check at each claim.
    probe: LogProbe,
    /// Bumped by every assignment and revocation, so the loop can tell messages
    /// polled before a rebalance from those after it.
    rebalances: AtomicU64,
    /// How long an id decision may go unanswered (ms): [`deadline::ROUND_TRIP`],
    /// doubled after each decision that ran out of it, so that a Postgres merely
    /// slower than that still gets through; back to the start after an answer.
    ids_deadline_ms: AtomicU64,
    state: Mutex<State>,
}

/// A claimed partition with what its fence found; `replaced`: its log is counted
/// anew from its beginning, in place of the old log whose position the row holds.
fn owned(claim: &Claim, fence: protocol::Fence, replaced: Option<i64>) -> Partition {
    let mut partition = Partition::from_claim(claim, fence);
    if let Some(row) = replaced {
        // What Redis holds came from the old log: write memory over it.
        partition.marks.new_log = true;
        partition.core.count_new_log(row);
    }
    partition
}

/// What changes as the aggregator runs.
struct State {
    partitions: BTreeMap<i32, Partition>,
    batch: Batch,
    /// The previous batch while Redis applies it (overlapping the next poll).
    applying: Option<Applying>,
    /// A batch whose client ids Postgres has not decided yet; polling waits for it.
    undecided: Option<Vec<(i32, PartBatch)>>,
    /// Partitions assigned to us that we may not write (paused in Kafka).
    held: BTreeMap<i32, Held>,
    /// The flush in flight, or waiting to be retried.
    flush: Option<InFlight>,
    next_flush: Instant,
    next_live_check: Instant,
    /// No restore is tried before this (set after one failed: Redis is away).
    next_restore: Instant,
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
    /// How long the attempt may go without an answer before it is handled as a cut
    /// connection: [`FLUSH_DEADLINE`], doubled after each attempt that ran out of
    /// it (a flush that is merely slow still gets through).
    deadline: Duration,
}

/// The first attempt's deadline of a flush (see [`InFlight::deadline`]).
pub(crate) const FLUSH_DEADLINE: Duration = Duration::from_secs(8);
/// Added to a flush's first deadline per key it writes: several times what Postgres
/// takes for a key's total and daily rows (about 13 µs measured by `deploy/local/bench` on 2 cores).
const FLUSH_TIME_PER_KEY: Duration = Duration::from_micros(100);
/// The longest deadline a flush attempt gets (a larger first one is kept as it is).
const FLUSH_DEADLINE_MAX: Duration = Duration::from_secs(120);
/// A flush waiting longer than this for Postgres shows on `/readyz` (a flush takes
/// milliseconds to a second).
const FLUSH_SLOW: Duration = Duration::from_secs(4);
/// Readiness fault reported while a flush waits long for Postgres, and for a while
/// after a Postgres round trip got no answer.
const SILENT_FAULT: &str = "postgres_silent";
/// How long [`SILENT_FAULT`] stays reported after the last round trip that got no
/// answer (a successful flush clears it at once).
const SILENT_FAULT_FOR: Duration = Duration::from_secs(30);

/// Everything [`Aggregator::new`] needs.
pub struct Parts {
    pub rt: Handle,
    pub db: DatabaseConnection,
    pub scope: Scope,
    pub pending: Pending,
    pub dlq: Dlq,
    pub shutdown: Shutdown,
    pub health: Health,
    pub requested_flush: Arc<AtomicI64>,
    pub tuning: Tuning,
    pub probe: LogProbe,
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
            shutdown: parts.shutdown,
            health: parts.health,
            requested_flush: parts.requested_flush,
            tuning: parts.tuning,
            probe: parts.probe,
            rebalances: AtomicU64::new(0),
            ids_deadline_ms: AtomicU64::new(deadline::ROUND_TRIP.as_millis() as u64),
            state: Mutex::new(State {
                partitions: BTreeMap::new(),
                batch: Batch::default(),
                applying: None,
                undecided: None,
                held: BTreeMap::new(),
                flush: None,
                next_flush,
                next_live_check: Instant::now(),
                next_restore: Instant::now(),
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

    /// Takes over the claimed partitions and points the consumer at the offsets
    /// Postgres holds.
    /// `claims` are `(claim, what its fence found, log recreated)`;
    /// `held` the assigned partitions that could not be claimed.
    pub fn assign<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &mut TopicPartitionList,
        claims: Vec<(Claim, protocol::Fence, Option<i64>)>,
        held: Vec<(i32, Hold)>,
    ) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state();
        self.land(&mut state);
        state.batch.clear();
        state.undecided = None;
        for (claim, fence, replaced) in &claims {
            // Postgres is the authoritative position; without one, nothing of this
            // partition was ever flushed, so all of it is to be counted.
            let start = claim.next_offset.map_or(Offset::Beginning, Offset::Offset);
            let _ = tpl.set_partition_offset(&self.scope.topic, claim.partition, start);
            state
                .partitions
                .insert(claim.partition, owned(claim, *fence, *replaced));
        }
        drop(state);
        let partitions: Vec<i32> = claims.iter().map(|(c, _, _)| c.partition).collect();
        tracing::info!(partitions = ?partitions, "partitions assigned");
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
        }
        // A pause outlives an assignment: a partition held before is ours again.
        let mut owned = TopicPartitionList::new();
        for partition in &partitions {
            owned.add_partition(&self.scope.topic, *partition);
        }
        if let Err(e) = consumer.resume(&owned) {
            tracing::warn!(error = %e, "cannot resume the assigned partitions");
        }
        self.hold_assigned(consumer, &held);
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
        state.undecided = None;
        state.flush = None;
        state.held.clear();
        self.report_held(&state);
        metrics::gauge!(m::PENDING_KEYS).set(0.0);
        drop(state);
        if !owned.is_empty() {
            tracing::info!(partitions = ?owned, "partitions revoked");
        }
    }

    /// True while polling should pause: a batch waits for Redis to decide its client
    /// ids, or so many keys wait for Postgres.
    pub(crate) fn must_wait(&self) -> bool {
        let state = self.state();
        let pending = || {
            state
                .partitions
                .values()
                .map(|p| p.core.pending_keys())
                .sum::<usize>()
        };
        state.undecided.is_some() || (state.flush.is_some() && pending() >= PENDING_CAP)
    }

    /// Assignments and revocations so far.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }

    /// Takes one polled message into the batch (dropped when its partition is not
    /// owned or it is a re-delivery).
    pub fn add(&self, partition: i32, offset: i64, payload: Option<&[u8]>, key: Option<&[u8]>) {
        self.add_all(std::iter::once(Polled {
            key,
            ..Polled::new(partition, offset, payload)
        }));
    }

    /// [`Aggregator::add`] for several messages, under one lock.
    pub(crate) fn add_all<'m>(&self, messages: impl Iterator<Item = Polled<'m>>) {
        let mut state = self.state();
        let State {
            partitions, batch, ..
        } = &mut *state;
        for m in messages {
            if let Some(owner) = partitions.get(&m.partition) {
                batch.add(&m, owner);
            }
        }
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
