//! Reading the replay topic once, for every month of a backfill: each partition from
//! its start until the read finds no more, and at least to the end the broker
//! reported when the read began.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::store::backfill::Month;
use crate::store::{visitors, Counts};
use viewpipe_runtime::kafka::{self, KafkaSettings};
use viewpipe_runtime::progress::Progress;
use viewpipe_schema::EventRef;

/// A read that makes no progress for this long gives up.
const STALL: Duration = Duration::from_secs(60);

/// What the replay holds of one month.
#[derive(Default)]
pub struct MonthReplay {
    pub counts: Counts,
    /// Views counted, and events dropped as repeats of an `eventId` of their key.
    pub events: u64,
    pub duplicates: u64,
    /// The first offset holding an event of the month, per partition.
    pub first_offsets: BTreeMap<i32, i64>,
    ids: HashSet<(Box<str>, Box<str>)>,
}

/// The replay topic as read.
pub struct Replay {
    pub months: BTreeMap<Month, MonthReplay>,
    /// Where each partition's log started (retention may have moved it past 0).
    pub log_starts: BTreeMap<i32, i64>,
    /// How far each partition was read: the offset after the last message read, or
    /// where its log started when it held none. A run may skip a month only for a
    /// rebuild that read at least as far (see `backfill::rebuilt_since`).
    pub read_to: BTreeMap<i32, i64>,
    pub messages: u64,
    /// Messages that are not valid events (skipped, as the live aggregator does).
    pub invalid: u64,
    /// Valid events of months outside the range.
    pub other_months: u64,
}

/// Reads `topic` from each partition's start to its end at the start of the read,
/// counting the events of `months`. Blocking: run it off the async runtime.
pub fn read(
    kafka: &KafkaSettings,
    topic: &str,
    months: &BTreeSet<Month>,
) -> anyhow::Result<Replay> {
    let consumer: BaseConsumer = kafka::base_config(kafka)
        // Needed by librdkafka, never joined: partitions are assigned by hand.
        .set("group.id", "viewpipe-backfill")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "25")
        .set("enable.partition.eof", "true")
        .create()
        .context("invalid Kafka settings")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("cannot reach Kafka at {}", kafka.brokers))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist at {}", kafka.brokers);
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut log_starts = BTreeMap::new();
    let mut total = 0u64;
    let mut read_to: BTreeMap<i32, i64> = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| {
                format!("cannot read where partition {p} of {topic} starts and ends")
            })?;
        log_starts.insert(p, low);
        read_to.insert(p, low);
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
            total += (high - low) as u64;
        }
    }
    consumer.assign(&tpl)?;

    let mut replay = Replay {
        months: months
            .iter()
            .map(|m| (*m, MonthReplay::default()))
            .collect(),
        log_starts,
        read_to: BTreeMap::new(),
        messages: 0,
        invalid: 0,
        other_months: 0,
    };
    let mut progress = Progress::new(&format!("reading {topic}"), Some(total));
    let mut key = String::new();
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() > STALL {
                bail!(
                    "reading {topic} stalled: partitions {:?} not read to their end",
                    ends.keys().collect::<Vec<_>>()
                );
            }
            continue;
        };
        // A partition is read once it was read to its reported end and the
        // consumer found no more: some brokers report the start of the last batch
        // as the end, so the end a read sees decides, not the one reported. (A
        // topic still written to ends whenever the read catches up with it.)
        let m = match polled {
            Err(KafkaError::PartitionEOF(p)) => {
                if ends.get(&p).is_some_and(|end| read_to.get(&p) >= Some(end)) {
                    ends.remove(&p);
                }
                continue;
            }
            other => other.with_context(|| format!("reading {topic}"))?,
        };
        let (partition, offset) = (m.partition(), m.offset());
        if !ends.contains_key(&partition) {
            continue;
        }
        read_to.insert(partition, offset + 1);
        last_progress = Instant::now();
        replay.messages += 1;
        progress.update(
            replay.messages,
            replay.messages,
            &format!("{} messages", replay.messages),
        );
        let Some(Ok(event)) = m.payload().map(EventRef::parse) else {
            replay.invalid += 1;
            continue;
        };
        let day = event.day();
        let Some(month) = replay.months.get_mut(&Month::of(day)) else {
            replay.other_months += 1;
            continue;
        };
        month.first_offsets.entry(partition).or_insert(offset);
        key.clear();
        key.push_str(&event.content_type);
        key.push(':');
        key.push_str(&event.content_id);
        if let Some(id) = &event.event_id {
            if !month.ids.insert((key.as_str().into(), id.as_ref().into())) {
                month.duplicates += 1;
                continue;
            }
        }
        let visitor = event.visitor.as_deref().map(visitors::hash);
        month
            .counts
            .add_view(&key, day, event.path.as_deref(), visitor);
        month.events += 1;
    }
    progress.finish(
        replay.messages,
        replay.messages,
        &format!("{} messages", replay.messages),
    );
    for month in replay.months.values_mut() {
        month.ids = HashSet::new();
    }
    replay.read_to = read_to;
    Ok(replay)
}
