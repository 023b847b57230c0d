//! How many partitions the views topic has, kept current from the broker's metadata:
//! what a read needs to tell a key's own partitions from the others (see
//! [`viewpipe_schema::pending::homes`]).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use viewpipe_runtime::Shutdown;
use viewpipe_schema::pending::homes::homes;

/// How often the partition count is looked up again (partitions are added rarely,
/// and a count not yet seen only makes reads wait more).
const REFRESH: Duration = Duration::from_secs(10);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The views topic's partition count; 0 until the broker said.
#[derive(Clone, Default)]
pub struct TopicPartitions(Arc<AtomicI32>);

impl TopicPartitions {
    /// Of `unreadable`, the partitions `key` may have views in: its two home
    /// partitions, and any partition the count does not know of yet. All of them
    /// while the count is unknown.
    pub(super) fn own(&self, key: &str, unreadable: &[i32]) -> Vec<i32> {
        let n = self.0.load(Ordering::Relaxed);
        if n <= 0 {
            return unreadable.to_vec();
        }
        let homes = homes(key.as_bytes(), n);
        unreadable
            .iter()
            .copied()
            .filter(|p| *p >= n || homes.contains(p))
            .collect()
    }

    pub(crate) fn set(&self, partitions: i32) {
        self.0.store(partitions, Ordering::Relaxed);
    }

    /// Keeps the count current from `producer`'s metadata of `topic` until shutdown.
    /// A failed lookup keeps the last count.
    pub fn watch(&self, producer: FutureProducer, topic: String, shutdown: Shutdown) {
        let count = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            while !shutdown.is_triggered() {
                tick.tick().await;
                let (producer, topic) = (producer.clone(), topic.clone());
                let looked = tokio::task::spawn_blocking(move || {
                    let metadata = producer
                        .client()
                        .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                        .ok()?;
                    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
                    let n = found.partitions().len();
                    (found.error().is_none() && n > 0).then_some(n)
                })
                .await;
                match looked {
                    Ok(Some(n)) => count.set(i32::try_from(n).unwrap_or(i32::MAX)),
                    _ => tracing::debug!("cannot read the views topic's partition count yet"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_count_makes_every_unreadable_partition_the_keys_own() {
        let count = TopicPartitions::default();
        assert_eq!(count.own("resource:a", &[3, 7]), vec![3, 7]);
        count.set(16);
        let [a, b] = homes(b"resource:a", 16);
        let all: Vec<i32> = (0..20).collect();
        let own = count.own("resource:a", &all);
        let mut expected: Vec<i32> = vec![a, b];
        expected.extend(16..20);
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(
            own, expected,
            "its homes, and partitions past the known count"
        );
    }
}
