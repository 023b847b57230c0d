//! Producing a workload into the broker with the ingest's producer settings (the raw
//! produce rate); the consumers it is read back with are in [`crate::consumers`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
