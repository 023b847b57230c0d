//! The broker's own speed: producing a workload with the ingest's producer settings,
//! and consuming it back with the aggregator's consumer settings, doing nothing else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use viewpipe_runtime::kafka;

use crate::workload::{Event, Generator, Workload};

/// Counts failed deliveries.
#[derive(Default, Clone)]
struct Deliveries {
    failed: Arc<AtomicUsize>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What producing a workload found.
pub struct Produced {
    pub rate: f64,
    pub distinct_keys: usize,
    pub with_ids: usize,
}

/// How to produce: as fast as the broker takes it, or at a steady rate for a while.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    Flat,
    /// Events per second, until the instant (events not sent by then are left out).
    Steady(f64, Instant),
}

/// Produces the events of `workload` to `topic` (idempotent, acks=all, as the ingest
/// does); returns the rate achieved.
pub fn produce(
    brokers: &str,
    topic: &str,
    workload: &Workload,
    pace: Pace,
) -> anyhow::Result<Produced> {
    let context = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> =
        kafka::producer_config(&kafka::KafkaSettings::plain(brokers))
            .set("queue.buffering.max.messages", "500000")
            .create_with_context(context.clone())
            .context("bench producer")?;
    let mut seen = vec![
        false;
        match workload.keys {
            crate::workload::Keys::Zipf { n, .. } | crate::workload::Keys::Uniform { n } => n,
        }
    ];
    let (mut distinct_keys, mut with_ids) = (0, 0);
    let started = Instant::now();
    for (i, event) in Generator::new(workload).enumerate() {
        if !seen[event.key_index] {
            seen[event.key_index] = true;
            distinct_keys += 1;
        }
        with_ids += usize::from(event.has_id);
        if let Pace::Steady(rate, until) = pace {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if due > until || Instant::now() > until {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        send(&producer, topic, &event)?;
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the bench producer")?;
    let failed = context.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} events were not acknowledged by the broker");
    }
    if matches!(pace, Pace::Flat) {
        // A steady load is consumed as it goes; only a workload read later must fit.
        check_log_start(producer.client(), topic)?;
    }
    Ok(Produced {
        rate: workload.events as f64 / started.elapsed().as_secs_f64(),
        distinct_keys,
        with_ids,
    })
}

/// The dev broker keeps about 5 MiB per partition and drops older batches silently;
/// a run whose log no longer starts at offset 0 would measure a partial workload.
fn check_log_start<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> anyhow::Result<()> {
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    for p in 0..partitions as i32 {
        let (low, high) = client.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if low > 0 {
            bail!(
                "the broker dropped the oldest {low} of {high} messages of {topic}/{p} (its log is bounded); run with fewer --events"
            );
        }
    }
    Ok(())
}

fn send(producer: &ThreadedProducer<Deliveries>, topic: &str, event: &Event) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic)
        .key(event.key.as_bytes())
        .payload(event.payload.as_slice())
        .timestamp(event.timestamp_ms);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
    }
}

/// Notes when the group assigned partitions.
#[derive(Default)]
struct Assigned {
    at: std::sync::Mutex<Option<Instant>>,
}

impl ClientContext for Assigned {}

impl ConsumerContext for Assigned {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
            at.get_or_insert_with(Instant::now);
        }
    }
}

/// Consumes `expected` messages of `topic` from the beginning with the aggregator's
/// consumer settings, touching each payload; returns messages/s from the moment the
/// group assigned the partitions to the last message (fetching included, joining
/// the group not).
pub fn consume(brokers: &str, topic: &str, expected: usize) -> anyhow::Result<f64> {
    let group = format!("bench-raw-{:08x}", rand::random::<u32>());
    let consumer: BaseConsumer<Assigned> = kafka::consumer_config(
        &kafka::KafkaSettings::plain(brokers),
        &group,
        std::time::Duration::from_secs(6),
    )
    .create_with_context(Assigned::default())
    .context("bench consumer")?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut seen, mut bytes) = (0usize, 0usize);
    while seen < expected {
        if Instant::now() > deadline {
            bail!("raw consume read {seen} of {expected} messages in 300 s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                seen += 1;
                bytes += msg.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "raw consumer error"),
            None => {}
        }
    }
    let assigned = *consumer
        .context()
        .at
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let elapsed = assigned.map_or(Duration::ZERO, |a| a.elapsed());
    std::hint::black_box(bytes);
    Ok(seen as f64 / elapsed.as_secs_f64().max(1e-9))
}
