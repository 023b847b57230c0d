//! A polled batch: each message is parsed as it arrives (borrowing from librdkafka's
//! buffer) and summed per partition and key, so that nothing is allocated per event
//! and Redis gets one write per key and partition, not one per event. A view's
//! visitor (its `sessionId`, else its `visitorId`) is hashed here and goes into the
//! key's sketch of that day; views without one cost nothing more.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use crate::store::{visitors, Counts};
use viewpipe_schema::{ContentKey, EventRef};

use crate::log_check;
use crate::partition::Partition;

/// One polled message, borrowed from librdkafka's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Polled<'m> {
    pub partition: i32,
    pub offset: i64,
    /// Its timestamp (ms), part of its mark.
    pub timestamp: Option<i64>,
    pub payload: Option<&'m [u8]>,
    pub key: Option<&'m [u8]>,
}

impl<'m> Polled<'m> {
    /// A message without key or timestamp.
    pub fn new(partition: i32, offset: i64, payload: Option<&'m [u8]>) -> Self {
        Self {
            partition,
            offset,
            timestamp: None,
            payload,
            key: None,
        }
    }
}

/// The messages of one partition in a batch.
#[derive(Debug, Default)]
pub struct PartBatch {
    /// The claim they were polled under. A re-claim starts the partition's batch over.
    pub epoch: i64,
    /// Offsets below this are re-deliveries (Kafka after a seek, or a rebalance that
    /// re-assigned the partition while its messages were being gathered): each offset
    /// is taken once, in order.
    next: i64,
    /// The last offset taken, and its mark (see [`log_check`]).
    pub last: Option<i64>,
    pub last_mark: i64,
    /// The first message taken: `(offset, mark)`.
    pub first: Option<(i64, i64)>,
    /// Views at offsets Redis does not hold yet: they go to Redis and to memory.
    pub fresh: Counts,
    /// Views at offsets Redis already holds (a predecessor counted them): memory only.
    pub replayed: Counts,
    /// Views carrying a client-chosen id: counted once their id is found new.
    pub with_ids: Vec<IdEvent>,
    /// Messages that are not valid events, for the DLQ.
    pub invalid: Vec<Invalid>,
    /// The newest `occurredAt` among its events: the partition's event clock.
    pub latest: Option<DateTime<Utc>>,
}

/// A view with a client-chosen `eventId`.
#[derive(Debug)]
pub struct IdEvent {
    pub offset: i64,
    pub key: String,
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub day: NaiveDate,
    pub path: Option<String>,
    /// The hash of its visitor, if it has one.
    pub visitor: Option<u64>,
    /// At an offset Redis already holds.
    pub replayed: bool,
}

/// A message that is not a valid event, copied for the DLQ.
#[derive(Debug)]
pub struct Invalid {
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub reason: String,
}

impl PartBatch {
    fn new(state: &Partition) -> Self {
        Self {
            epoch: state.epoch(),
            next: state.core.consumed_to().unwrap_or(0),
            ..Self::default()
        }
    }
}

/// Messages polled and not yet processed, by partition.
#[derive(Debug, Default)]
pub struct Batch {
    parts: BTreeMap<i32, PartBatch>,
    messages: usize,
    key: String,
}

impl Batch {
    /// Takes one polled message of `partition` (whose state is `state`). Returns false
    /// when it was dropped as a re-delivery.
    pub fn add(&mut self, m: &Polled<'_>, state: &Partition) -> bool {
        let Polled {
            partition,
            offset,
            payload,
            key,
            ..
        } = *m;
        let part = self
            .parts
            .entry(partition)
            .or_insert_with(|| PartBatch::new(state));
        if part.epoch != state.epoch() {
            *part = PartBatch::new(state);
        }
        if offset < part.next {
            return false;
        }
        part.next = offset + 1;
        part.last = Some(offset);
        part.last_mark = log_check::mark(m.timestamp, key, payload);
        part.first.get_or_insert((offset, part.last_mark));
        self.messages += 1;
        let replayed = state.core.replayed(offset);
        let parsed = match payload {
            Some(bytes) => EventRef::parse(bytes).map_err(|e| format!("{}: {e}", e.code())),
            None => Err("invalid_json: empty message".to_owned()),
        };
        match parsed {
            Ok(event) => {
                part.latest = part.latest.max(Some(event.occurred_at));
                let visitor = event.visitor.as_deref().map(visitors::hash);
                self.key.clear();
                ContentKey::write(&mut self.key, &event.content_type, &event.content_id);
                if let Some(id) = &event.event_id {
                    part.with_ids.push(IdEvent {
                        offset,
                        key: self.key.clone(),
                        event_id: id.to_string(),
                        occurred_at: event.occurred_at,
                        day: event.day(),
                        path: event.path.as_deref().map(str::to_owned),
                        visitor,
                        replayed,
                    });
                } else {
                    let counts = if replayed {
                        &mut part.replayed
                    } else {
                        &mut part.fresh
                    };
                    counts.add_view(&self.key, event.day(), event.path.as_deref(), visitor);
                }
            }
            Err(reason) => part.invalid.push(Invalid {
                offset,
                payload: payload.map(<[u8]>::to_vec),
                key: key.map(<[u8]>::to_vec),
                reason,
            }),
        }
        true
    }

    /// Messages taken since the last [`Batch::take`].
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Hands the batch over, leaving this one empty.
    pub fn take(&mut self) -> BTreeMap<i32, PartBatch> {
        self.messages = 0;
        std::mem::take(&mut self.parts)
    }

    /// Forgets everything gathered (the partitions were revoked).
    pub fn clear(&mut self) {
        self.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Fence;
    use crate::store::Claim;

    fn state(next_offset: Option<i64>, epoch: i64, redis_at: i64) -> Partition {
        Partition::from_claim(
            &Claim {
                next_offset,
                epoch,
                ..Claim::default()
            },
            Fence::Done(redis_at),
        )
    }

    fn event(id: &str, event_id: Option<&str>) -> Vec<u8> {
        let event_id = event_id.map_or(String::new(), |e| format!(",\"eventId\":\"{e}\""));
        format!(r#"{{"v":1,"contentType":"resource","contentId":"{id}","occurredAt":"2026-11-20T10:00:00Z"{event_id}}}"#)
            .into_bytes()
    }

    #[test]
    fn each_offset_is_taken_once_even_when_polled_again_after_a_rebalance() {
        let mut batch = Batch::default();
        let owner = state(Some(100), 3, -1);
        for offset in 100..110 {
            assert!(batch.add(&Polled::new(0, offset, Some(&event("a", None))), &owner));
        }
        // The partition is revoked and assigned again at the same position before the
        // batch was processed; the consumer fetches 100.. once more.
        for offset in 100..112 {
            batch.add(&Polled::new(0, offset, Some(&event("a", None))), &owner);
        }
        assert_eq!(batch.len(), 12);
        let parts = batch.take();
        assert_eq!(parts[&0].fresh.views(), 12);
        assert_eq!(parts[&0].last, Some(111));
    }

    #[test]
    fn a_new_claim_starts_the_partition_over_and_replayed_offsets_stay_in_memory() {
        let mut batch = Batch::default();
        batch.add(
            &Polled::new(0, 0, Some(&event("a", None))),
            &state(Some(0), 1, -1),
        );
        // Claimed again (epoch 2) at offset 0, with Redis holding up to offset 1.
        let again = state(Some(0), 2, 1);
        for offset in 0..4 {
            batch.add(&Polled::new(0, offset, Some(&event("a", None))), &again);
        }
        batch.add(&Polled::new(0, 4, Some(&event("a", Some("e1")))), &again);
        let keyed = Polled {
            key: Some(b"k"),
            ..Polled::new(0, 5, Some(b"not json"))
        };
        batch.add(&keyed, &again);
        batch.add(&Polled::new(0, 6, None), &again);
        let parts = batch.take();
        let part = &parts[&0];
        assert_eq!((part.replayed.views(), part.fresh.views()), (2, 2));
        assert_eq!(part.with_ids.len(), 1);
        assert_eq!(part.with_ids[0].key, "resource:a");
        assert_eq!(part.invalid.len(), 2);
        assert!(
            part.invalid[0].reason.starts_with("invalid_json"),
            "{}",
            part.invalid[0].reason
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn visitors_are_hashed_into_their_key_and_day_and_ride_along_with_ids() {
        let mut batch = Batch::default();
        let owner = state(Some(0), 1, -1);
        let view = |session: &str, extra: &str| {
            format!(r#"{{"v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-20T10:00:00Z"{session}{extra}}}"#)
                .into_bytes()
        };
        let payloads = [
            view(r#","sessionId":"s1""#, ""),
            view(r#","sessionId":"s1""#, ""),
            view(r#","visitorId":"h2""#, ""),
            view(r#","visitorId":"h3","sessionId":"s1""#, ""),
            view("", ""),
            view(r#","sessionId":"s4""#, r#","eventId":"e1""#),
        ];
        for (offset, payload) in payloads.iter().enumerate() {
            batch.add(&Polled::new(0, offset as i64, Some(payload)), &owner);
        }
        let parts = batch.take();
        let part = &parts[&0];
        let a = part.fresh.get("resource:a").expect("key");
        assert_eq!(a.total(), 5);
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).expect("date");
        let visitors: Vec<(NaiveDate, u64)> =
            a.visitors().map(|(d, s)| (d, s.estimate())).collect();
        assert_eq!(
            visitors,
            vec![(day, 2)],
            "s1 (the session wins over h3) and h2"
        );
        assert_eq!(part.with_ids[0].visitor, Some(visitors::hash("s4")));
    }
}
