//! Turning a polled batch into counts: parse, send the unusable to the DLQ, apply
//! the rest to Redis, and add what counted to the partitions' pending deltas.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use viewpipe_schema::{ContentKey, ViewEvent};
use viewpipe_store::pending::Applied;
use viewpipe_store::{KeyDelta, KeyMessages, Message};

use crate::consumer::Shared;
use crate::metrics as m;
use crate::state::Core;

/// A polled message, copied out of librdkafka's buffer.
pub struct Raw {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
}

/// Processes one batch. On a Redis or DLQ failure that outlasts the retries (only at
/// shutdown), the affected partition's consumed position is not advanced, so its
/// messages are consumed again by whoever owns it next.
pub fn process(shared: &Shared, core: &mut Core, batch: Vec<Raw>) {
    let mut by_partition: BTreeMap<i32, Vec<Raw>> = BTreeMap::new();
    for raw in batch {
        by_partition.entry(raw.partition).or_default().push(raw);
    }
    for (partition, mut raws) in by_partition {
        let Some(state) = core.partitions.get_mut(&partition) else {
            continue; // revoked since it was polled
        };
        raws.retain(|r| !state.is_flushed(r.offset));
        raws.sort_by_key(|r| r.offset);
        let Some(last) = raws.last().map(|r| r.offset) else {
            continue;
        };
        let (gen, epoch) = (state.gen, state.epoch);
        let (events, invalid) = parse(shared, raws);
        if !send_to_dlq(shared, partition, &invalid) {
            continue;
        }
        let grouped = match apply(shared, partition, gen, epoch, events) {
            Ok(grouped) => grouped,
            Err(Skip::Shutdown) => continue,
            Err(Skip::Stale) => {
                tracing::warn!(
                    partition,
                    "a newer owner has written this partition in Redis; dropping it (its owner counts it)"
                );
                core.partitions.remove(&partition);
                continue;
            }
        };
        let (mut counted, mut duplicates) = (0u64, 0u64);
        for (key, events, flags) in grouped {
            for (event, counts) in events.iter().zip(flags) {
                if !counts {
                    duplicates += 1;
                    continue;
                }
                counted += 1;
                let delta = state
                    .pending
                    .entry(key.as_str().to_owned())
                    .or_insert_with(|| KeyDelta {
                        namespace: key.content_type().to_owned(),
                        entity_id: key.content_id().to_owned(),
                        ..KeyDelta::default()
                    });
                delta.total += 1;
                *delta.days.entry(event.day()).or_default() += 1;
                if event.path.is_some() {
                    delta.path.clone_from(&event.path);
                }
            }
        }
        state.consumed_to = Some(last + 1);
        metrics::counter!(m::EVENTS, "result" => "counted").increment(counted);
        metrics::counter!(m::EVENTS, "result" => "duplicate").increment(duplicates);
        metrics::counter!(m::EVENTS, "result" => "invalid").increment(invalid.len() as u64);
    }
}

type Grouped = Vec<(ContentKey, Vec<ViewEvent>, Vec<bool>)>;
/// Parsed events with their offsets, and unusable messages with the reason.
type Parsed = (Vec<(i64, ViewEvent)>, Vec<(Raw, String)>);

fn parse(shared: &Shared, raws: Vec<Raw>) -> Parsed {
    let mut events = Vec::with_capacity(raws.len());
    let mut invalid = Vec::new();
    for raw in raws {
        let parsed = match &raw.payload {
            Some(payload) => ViewEvent::from_slice(payload, &shared.namespaces)
                .map_err(|e| format!("{}: {e}", e.code())),
            None => Err("invalid_json: empty message".to_owned()),
        };
        match parsed {
            Ok(event) => events.push((raw.offset, event)),
            Err(reason) => invalid.push((raw, reason)),
        }
    }
    (events, invalid)
}

/// Why a partition's batch was not counted.
enum Skip {
    /// Redis stayed unreachable until shutdown.
    Shutdown,
    /// Redis refused the write: another aggregator owns the partition now.
    Stale,
}

/// Applies the events to Redis (or, in database-only mode, counts them all) and
/// returns them grouped by key with a counted flag each.
fn apply(
    shared: &Shared,
    partition: i32,
    gen: i64,
    epoch: i64,
    events: Vec<(i64, ViewEvent)>,
) -> Result<Grouped, Skip> {
    let mut index: HashMap<ContentKey, usize> = HashMap::new();
    let mut batch: Vec<KeyMessages> = Vec::new();
    let mut grouped_events: Vec<Vec<ViewEvent>> = Vec::new();
    for (offset, event) in events {
        let key = event.key();
        let slot = *index.entry(key.clone()).or_insert_with(|| {
            batch.push(KeyMessages {
                key,
                messages: Vec::new(),
            });
            grouped_events.push(Vec::new());
            batch.len() - 1
        });
        batch[slot].messages.push(Message {
            offset,
            day: event.day(),
            event_id: event.event_id.clone(),
        });
        grouped_events[slot].push(event);
    }
    let flags = match &shared.pending {
        None => batch
            .iter()
            .map(|km| vec![true; km.messages.len()])
            .collect(),
        Some(store) => {
            let mut wait = Duration::from_millis(50);
            loop {
                match shared
                    .rt
                    .block_on(store.apply(partition, gen, epoch, &batch))
                {
                    Ok(Applied::Flags(flags)) => break flags,
                    Ok(Applied::Stale) => return Err(Skip::Stale),
                    Err(e) if !shared.shutdown.is_triggered() => {
                        tracing::warn!(error = %e, "Redis apply failed; retrying");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(_) => return Err(Skip::Shutdown),
                }
            }
        }
    };
    Ok(batch
        .into_iter()
        .zip(grouped_events)
        .zip(flags)
        .map(|((km, events), flags)| (km.key, events, flags))
        .collect())
}

/// Copies unusable messages to the DLQ with an `error` header and waits for the
/// broker's acknowledgement, so none is skipped before it is safely parked.
fn send_to_dlq(shared: &Shared, partition: i32, invalid: &[(Raw, String)]) -> bool {
    if invalid.is_empty() {
        return true;
    }
    let mut wait = Duration::from_millis(100);
    loop {
        let sends = invalid.iter().map(|(raw, reason)| {
            tracing::warn!(partition, offset = raw.offset, reason = %reason, "message sent to the DLQ");
            let headers = OwnedHeaders::new()
                .insert(Header { key: "error", value: Some(reason.as_bytes()) })
                .insert(Header { key: "source_partition", value: Some(partition.to_string().as_bytes()) })
                .insert(Header { key: "source_offset", value: Some(raw.offset.to_string().as_bytes()) });
            let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&shared.dlq_topic).headers(headers);
            if let Some(p) = &raw.payload {
                record = record.payload(p);
            }
            if let Some(k) = &raw.key {
                record = record.key(k);
            }
            shared.dlq.send(record, Duration::from_secs(5))
        });
        let results = shared.rt.block_on(futures::future::join_all(sends));
        if results.iter().all(Result::is_ok) {
            return true;
        }
        if shared.shutdown.is_triggered() {
            return false;
        }
        tracing::warn!("DLQ publish failed; retrying");
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
