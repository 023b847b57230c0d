//! Parking messages that are not valid events in the DLQ topic.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::runtime::Handle;

use crate::batch::Invalid;
use crate::retry::{retry, Backoff, Until};

/// The DLQ producer and topic.
pub struct Dlq {
    pub producer: FutureProducer,
    pub topic: String,
}

impl Dlq {
    /// Copies `invalid` messages of `partition` to the DLQ with `error`,
    /// `source_partition` and `source_offset` headers, and waits for the broker's
    /// acknowledgement, so none is skipped before it is safely parked. Retries until
    /// `stopped`; returns false if it gave up.
    pub(crate) fn park(
        &self,
        rt: &Handle,
        partition: i32,
        invalid: &[Invalid],
        stopped: &dyn Fn() -> bool,
    ) -> bool {
        if invalid.is_empty() {
            return true;
        }
        for m in invalid {
            tracing::warn!(partition, offset = m.offset, reason = %m.reason, "message sent to the DLQ");
        }
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        retry("DLQ publish", backoff, Until::Stopped(stopped), || {
            let sends = invalid.iter().map(|m| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "error",
                        value: Some(m.reason.as_bytes()),
                    })
                    .insert(Header {
                        key: "source_partition",
                        value: Some(partition.to_string().as_bytes()),
                    })
                    .insert(Header {
                        key: "source_offset",
                        value: Some(m.offset.to_string().as_bytes()),
                    });
                let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topic).headers(headers);
                if let Some(p) = &m.payload {
                    record = record.payload(p);
                }
                if let Some(k) = &m.key {
                    record = record.key(k);
                }
                self.producer.send(record, Duration::from_secs(5))
            });
            let results = rt.block_on(futures::future::join_all(sends));
            match results.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some((e, _)) => Err(e),
            }
        })
        .is_some()
    }
}
