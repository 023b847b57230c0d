//! The consumer loop. It runs on its own OS thread with a synchronous
//! `BaseConsumer`, so that rebalance callbacks (which librdkafka runs inside `poll`)
//! can flush revoked partitions and claim assigned ones before returning: the group
//! does not move on until they are done. Async work (Redis, Postgres) is driven with
//! `Handle::block_on`, or spawned (the flush).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::store::Claim;
use viewpipe_runtime::{Health, Shutdown};

use crate::aggregator::{Aggregator, Claimed, Hold, STORE_PATIENCE};
use crate::batch::Polled;
use crate::metrics as m;
use crate::protocol::Fence;

/// Most messages taken into one batch.
const MAX_BATCH: usize = 20_000;
/// Messages polled before they are handed to the aggregator in one go.
const BURST: usize = 256;
/// Longest wait to fill a batch.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// How long the final flush at shutdown keeps retrying a failing Postgres.
const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// The consumer's context: rebalances and statistics go to the aggregator.
pub(crate) struct AggregatorContext {
    pub aggregator: Arc<Aggregator>,
}

impl ClientContext for AggregatorContext {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry each assigned
    /// partition's lag as the consumer sees it; no extra broker requests needed.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(self.aggregator.topic()) else {
            return;
        };
        let owned = self.aggregator.owned();
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
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut claims: Vec<(Claim, Fence, Option<i64>)> = Vec::new();
                let mut held: Vec<(i32, Hold)> = Vec::new();
                let mut patience = STORE_PATIENCE;
                for e in tpl.elements() {
                    match self.aggregator.claim(e.partition(), patience) {
                        Claimed::Owned(mut claim, fence) => {
                            if matches!(fence, Fence::NoAnswer | Fence::Full { .. }) {
                                patience = Duration::ZERO;
                            }
                            match self.aggregator.check_log(&mut claim) {
                                Ok(replaced) => claims.push((claim, fence, replaced)),
                                Err(reason) => held.push((e.partition(), reason)),
                            }
                        }
                        Claimed::Held(reason) => held.push((e.partition(), reason)),
                        Claimed::Stopped => {}
                    }
                }
                self.aggregator.assign(consumer, tpl, claims, held);
            }
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
    fn revoke(&self, consumer: &BaseConsumer<Self>) {
        // The lag of a partition is its new owner's to report: this one's reads 0.
        if let Ok(assigned) = consumer.assignment() {
            for e in assigned.elements() {
                metrics::gauge!(m::CONSUMER_LAG, "topic" => e.topic().to_owned(), "partition" => e.partition().to_string())
                    .set(0.0);
            }
        }
        self.aggregator.revoke(consumer);
        if let Err(e) = consumer.unassign() {
            tracing::warn!(error = %e, "unassign failed");
        }
    }
}

/// Polls, counts and flushes until shutdown; then flushes, commits and leaves.
pub(crate) fn run_loop(
    consumer: BaseConsumer<AggregatorContext>,
    health: Health,
    shutdown: Shutdown,
) {
    let aggregator = consumer.context().aggregator.clone();
    let mut burst: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BURST);
    while !shutdown.is_triggered() {
        health.beat();
        if aggregator.must_wait() {
            std::thread::sleep(Duration::from_millis(5));
            aggregator.process();
            aggregator.drive_flush(&consumer);
            continue;
        }
        let until = Instant::now() + BATCH_WAIT;
        let mut gathered = 0;
        let mut rebalances = aggregator.rebalances();
        while gathered < MAX_BATCH {
            let left = until.saturating_duration_since(Instant::now());
            // Wait only for the first message of a burst; take the rest as queued.
            while burst.len() < BURST {
                let wait = if burst.is_empty() {
                    left
                } else {
                    Duration::ZERO
                };
                match consumer.poll(wait) {
                    Some(Ok(msg)) => {
                        // A rebalance runs inside `poll`: whatever was polled before
                        // it belongs to an assignment that is gone.
                        let now = aggregator.rebalances();
                        if now != rebalances {
                            burst.clear();
                            rebalances = now;
                        }
                        burst.push(msg);
                    }
                    Some(Err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset,
                    ))) => aggregator.check_positions(&consumer),
                    Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                    None => break,
                }
            }
            gathered += burst.len();
            if aggregator.rebalances() == rebalances {
                aggregator.add_all(burst.iter().map(|m| Polled {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    payload: m.payload(),
                    key: m.key(),
                }));
            }
            burst.clear();
            if left.is_zero() || Instant::now() >= until {
                break;
            }
        }
        aggregator.process();
        aggregator.upkeep();
        aggregator.drive_flush(&consumer);
        aggregator.tend_held(&consumer);
    }
    tracing::info!("stopping: final flush");
    aggregator.finish(&consumer, SHUTDOWN_FLUSH_DEADLINE);
    consumer.unsubscribe();
    // Dropping the consumer closes it and leaves the group.
    drop(consumer);
    tracing::info!("consumer closed");
}
