//! The consumer loop. It runs on its own OS thread with a synchronous
//! `BaseConsumer`, so that rebalance callbacks (which librdkafka runs inside `poll`)
//! can flush revoked partitions and claim assigned ones before returning: the
//! group does not move on until they are done. Async work (Redis, Postgres) is
//! driven with `Handle::block_on`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sea_orm::DatabaseConnection;
use tokio::runtime::Handle;

use viewpipe_runtime::{Health, Shutdown};
use viewpipe_schema::Namespaces;
use viewpipe_store::{PendingStore, Scope};

use crate::batch::{self, Raw};
use crate::flush;
use crate::metrics as m;
use crate::state::{Core, Partition};
use crate::upkeep;

/// Most messages taken into one batch.
const MAX_BATCH: usize = 5000;
/// Longest wait to fill a batch.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// How long the final flush at shutdown keeps retrying a failing Postgres.
const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// Everything the loop and the rebalance callbacks share.
pub struct Shared {
    pub rt: Handle,
    pub db: DatabaseConnection,
    pub scope: Scope,
    pub pending: Option<PendingStore>,
    pub dlq: FutureProducer,
    pub dlq_topic: String,
    pub namespaces: Namespaces,
    pub core: Mutex<Core>,
    pub shutdown: Shutdown,
    /// The newest open flush request of the group (`jobs.seq`, 0 for none), kept
    /// current by a background task.
    pub requested_flush: AtomicI64,
    /// Revoked partitions are flushed within this, well inside the session timeout,
    /// or abandoned to their next owner.
    pub revoke_deadline: Duration,
}

impl Shared {
    pub fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock aborts the process anyway; recover the data.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn requested(&self) -> i64 {
        self.requested_flush.load(Ordering::Relaxed)
    }

    /// Flushes with retries until it succeeds or `deadline` passes.
    fn flush_with_retry(&self, core: &mut Core, deadline: Instant) -> Option<flush::Flushed> {
        let mut wait = Duration::from_millis(100);
        loop {
            match flush::flush(&self.rt, &self.db, &self.scope, core, self.requested()) {
                Ok(done) => return Some(done),
                Err(e) if Instant::now() + wait < deadline => {
                    tracing::warn!(error = %e, "flush failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush failed; giving up on this attempt");
                    return None;
                }
            }
        }
    }
}

pub struct AggregatorContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for AggregatorContext {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry each assigned
    /// partition's lag as the consumer sees it; no extra broker requests needed.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.scope.topic) else {
            return;
        };
        let owned: Vec<i32> = self.shared.core().partitions.keys().copied().collect();
        for (partition, stats) in &topic.partitions {
            if *partition < 0 || !owned.contains(partition) || stats.consumer_lag < 0 {
                continue;
            }
            metrics::gauge!(m::CONSUMER_LAG, "topic" => topic.topic.clone(), "partition" => partition.to_string())
                .set(stats.consumer_lag as f64);
        }
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        metrics::counter!(m::REBALANCES).increment(1);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer),
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                self.revoke(consumer);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Harmless for correctness: Postgres holds the authoritative position.
            tracing::debug!(error = %e, "Kafka offset commit failed");
        }
    }
}

impl AggregatorContext {
    /// Claims each assigned partition in Postgres and starts it at the offset
    /// Postgres holds.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let mut claimed: Vec<viewpipe_store::Claim> = Vec::new();
        for elem in tpl.elements() {
            let partition = elem.partition();
            let mut wait = Duration::from_millis(100);
            let claim = loop {
                match shared.rt.block_on(viewpipe_store::postgres::claim(
                    &shared.db,
                    &shared.scope,
                    partition,
                )) {
                    Ok(claim) => break Some(claim),
                    Err(e) if !shared.shutdown.is_triggered() => {
                        tracing::warn!(partition, error = %e, "cannot claim partition in Postgres; retrying");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    Err(_) => break None,
                }
            };
            if let Some(claim) = claim {
                claimed.push(claim);
            }
        }
        let log_ends: Vec<Option<i64>> = claimed
            .iter_mut()
            .map(|claim| check_log_end(consumer, &shared.scope.topic, claim))
            .collect();
        let mut core = shared.core();
        for (claim, log_end) in claimed.iter().zip(log_ends) {
            // Postgres is the authoritative position; without one, nothing from this
            // partition was ever flushed, so all of it is to be counted.
            let start = claim.next_offset.map_or(Offset::Beginning, Offset::Offset);
            let _ = tpl.set_partition_offset(&shared.scope.topic, claim.partition, start);
            let mut partition = Partition::from_claim(claim);
            // A first claim has no predecessor; without Redis nothing of a
            // predecessor's is visible; otherwise catch up with what it may have
            // counted (an unknown log end is looked up again by the loop).
            let start_offset = claim.next_offset.unwrap_or(0);
            let behind = log_end.is_none_or(|end| end > start_offset);
            if shared.pending.is_some() && claim.epoch > 1 && behind {
                partition.catch_up_to = Some(log_end.unwrap_or(i64::MAX));
            }
            core.partitions.insert(claim.partition, partition);
        }
        drop(core);
        let partitions: Vec<i32> = claimed.iter().map(|c| c.partition).collect();
        tracing::info!(partitions = ?partitions, "partitions assigned");
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
        }
    }

    /// Flushes everything owned, commits, and lets the partitions go.
    fn revoke(&self, consumer: &BaseConsumer<Self>) {
        let shared = &self.shared;
        let mut core = shared.core();
        let owned: Vec<i32> = core.partitions.keys().copied().collect();
        // Stay well inside the session timeout so the group can move on.
        let deadline = Instant::now() + shared.revoke_deadline;
        if let Some(done) = shared.flush_with_retry(&mut core, deadline) {
            if let Some(offsets) = done.offsets {
                let _ = consumer.commit(&offsets, CommitMode::Sync);
            }
        }
        // Unflushed counts (if Postgres failed) are dropped: the next owner resumes
        // from the offset Postgres holds and counts them again.
        core.partitions.clear();
        metrics::gauge!(m::PENDING_KEYS).set(0.0);
        drop(core);
        if !owned.is_empty() {
            tracing::info!(partitions = ?owned, "partitions revoked");
        }
        if let Err(e) = consumer.unassign() {
            tracing::warn!(error = %e, "unassign failed");
        }
    }
}

/// A partition whose log ends before the position Postgres holds was recreated or
/// truncated (a restarted in-memory dev broker does this; so does deleting and
/// recreating a topic). Its messages are new events: count it from its beginning
/// rather than skip them. Offsets are only compared when the broker answers.
/// Returns the log end, when the broker answered.
fn check_log_end(
    consumer: &BaseConsumer<AggregatorContext>,
    topic: &str,
    claim: &mut viewpipe_store::Claim,
) -> Option<i64> {
    let watermarks = consumer.fetch_watermarks(topic, claim.partition, Duration::from_secs(5));
    let Some(next) = claim.next_offset else {
        return watermarks.ok().map(|(_, high)| high);
    };
    match watermarks {
        Ok((_, high)) if high < next => {
            tracing::warn!(
                partition = claim.partition,
                log_end = high,
                postgres_position = next,
                "partition log ends before the position Postgres holds: the topic was recreated or truncated; counting it from its beginning"
            );
            claim.next_offset = None;
            Some(high)
        }
        Ok((_, high)) => Some(high),
        Err(e) => {
            tracing::warn!(partition = claim.partition, error = %e, "cannot read the partition's log end");
            None
        }
    }
}

/// Loop settings.
pub struct LoopSettings {
    pub flush_interval: Duration,
    pub flush_max_pending: usize,
}

/// Polls, counts and flushes until shutdown; then flushes, commits and leaves.
pub fn run_loop(consumer: BaseConsumer<AggregatorContext>, settings: LoopSettings, health: Health) {
    let shared = consumer.context().shared.clone();
    let database_only = shared.pending.is_none();
    let mut next_flush = Instant::now() + settings.flush_interval;
    let mut batch: Vec<Raw> = Vec::with_capacity(MAX_BATCH);
    let mut upkeep_clock = upkeep::Clock::default();
    while !shared.shutdown.is_triggered() {
        health.beat();
        let until = Instant::now() + BATCH_WAIT;
        while batch.len() < MAX_BATCH {
            let left = until.saturating_duration_since(Instant::now());
            match consumer.poll(left) {
                Some(Ok(msg)) => batch.push(Raw {
                    partition: msg.partition(),
                    offset: msg.offset(),
                    payload: msg.payload().map(<[u8]>::to_vec),
                    key: msg.key().map(<[u8]>::to_vec),
                }),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
            if left.is_zero() {
                break;
            }
        }
        if !batch.is_empty() {
            let mut core = shared.core();
            batch::process(&shared, &mut core, std::mem::take(&mut batch));
            metrics::gauge!(m::PENDING_KEYS).set(core.pending_keys() as f64);
        }
        {
            let mut core = shared.core();
            upkeep::catch_up(&consumer, &shared, &mut core, &mut upkeep_clock);
            upkeep::keep_live(&shared, &mut core);
        }
        let requested = shared.requested();
        let due = {
            let core = shared.core();
            let pending = core.pending_keys();
            database_only
                || Instant::now() >= next_flush
                || pending >= settings.flush_max_pending
                || core.answers_pending(requested)
        };
        if due {
            let mut core = shared.core();
            match flush::flush(&shared.rt, &shared.db, &shared.scope, &mut core, requested) {
                Ok(done) => {
                    if let Some(offsets) = done.offsets {
                        let _ = consumer.commit(&offsets, CommitMode::Async);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "flush failed; will retry"),
            }
            next_flush = Instant::now() + settings.flush_interval;
        }
    }
    tracing::info!("stopping: final flush");
    let mut core = shared.core();
    if let Some(done) = shared.flush_with_retry(&mut core, Instant::now() + SHUTDOWN_FLUSH_DEADLINE)
    {
        if let Some(offsets) = done.offsets {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(error = %e, "final offset commit failed (Postgres holds the position)");
            }
        }
    }
    core.partitions.clear();
    drop(core);
    consumer.unsubscribe();
    // Dropping the consumer closes it and leaves the group.
    drop(consumer);
    tracing::info!("consumer closed");
}
