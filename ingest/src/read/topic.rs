//! How many partitions the views topic has, kept current from the broker's metadata:
//! what a read needs to tell a key's own partitions from the others (see
//! [`viewpipe_schema::pending::homes`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, Producer};
use viewpipe_runtime::Shutdown;
use viewpipe_schema::pending::homes::homes;
use viewpipe_schema::pending::read::PartitionView;

/// How often the partition count is looked up again (partitions are added rarely,
/// and a count not yet seen only makes reads wait more).
const REFRESH: Duration = Duration::from_secs(10);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a count is still gone by after the topic grew past it: producers place
/// keys by the old count until their metadata is refreshed (the Java client's
/// `metadata.max.age.ms` is 5 min), and what they placed stays pending in the old
/// homes until flushed.
const FORMER_COUNTS_FOR: Duration = Duration::from_secs(600);

/// The views topic's partition count, and the counts it had in the last
/// [`FORMER_COUNTS_FOR`] as far as this process saw; none until the broker said.
#[derive(Clone, Default)]
pub struct TopicPartitions(Arc<Mutex<Vec<(i32, Instant)>>>);

impl TopicPartitions {
    /// Of `unreadable`, the partitions `key` may have views in: its home partitions
    /// under the current count and any recent former one, any partition past the
    /// count (one the broker had not reported yet), and any where `pending_here`
    /// says the read found
    /// views of the key. All of them while the count is unknown.
    pub(super) fn own(
        &self,
        key: &str,
        unreadable: &[i32],
        pending_here: impl Fn(i32) -> bool,
    ) -> Vec<i32> {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(largest) = counts.iter().map(|(n, _)| *n).max() else {
            return unreadable.to_vec();
        };
        let homes: Vec<i32> = counts
            .iter()
            .flat_map(|(n, _)| homes(key.as_bytes(), *n))
            .collect();
        unreadable
            .iter()
            .copied()
            .filter(|p| *p >= largest || homes.contains(p) || pending_here(*p))
            .collect()
    }

    /// Records that the topic has `partitions` now.
    pub(crate) fn set(&self, partitions: i32) {
        self.seen(partitions, Instant::now());
    }

    fn seen(&self, partitions: i32, now: Instant) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.retain(|(n, at)| *n != partitions && now.duration_since(*at) < FORMER_COUNTS_FOR);
        counts.push((partitions, now));
    }

    /// Keeps the count current from `producer`'s metadata of `topic` until shutdown.
    /// A failed lookup keeps the last count.
    pub fn watch(&self, producer: FutureProducer, topic: String, shutdown: Shutdown) {
        let count = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.wait() => return,
                }
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

/// True when a read found views of its key in partition `p`: a non-zero value in
/// any generation, in column `column` (every column with `None`).
pub(super) fn found_in(views: &[PartitionView], p: i32, column: Option<usize>) -> bool {
    views
        .iter()
        .filter(|v| v.partition == p)
        .flat_map(|v| &v.gens)
        .any(|(_, values)| match column {
            Some(i) => values.get(i).is_some_and(|n| *n != 0),
            None => values.iter().any(|n| *n != 0),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<i32>) -> Vec<i32> {
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn a_keys_own_partitions_are_its_homes_and_where_its_views_were_found() {
        let count = TopicPartitions::default();
        let nowhere = |_| false;
        assert_eq!(
            count.own("resource:a", &[3, 7], nowhere),
            vec![3, 7],
            "count unknown"
        );
        count.set(16);
        let all: Vec<i32> = (0..20).collect();
        let mut want: Vec<i32> = homes(b"resource:a", 16).to_vec();
        want.extend(16..20);
        assert_eq!(count.own("resource:a", &all, nowhere), sorted(want.clone()));
        want.push(5);
        assert_eq!(
            count.own("resource:a", &all, |p| p == 5),
            sorted(want),
            "views found in a partition make it the key's"
        );
    }

    #[test]
    fn a_former_count_is_gone_by_for_a_while_after_the_topic_grew() {
        let count = TopicPartitions::default();
        let start = Instant::now();
        count.seen(4, start);
        count.seen(8, start + Duration::from_secs(10));
        let all: Vec<i32> = (0..8).collect();
        let mut want: Vec<i32> = homes(b"resource:a", 4).to_vec();
        want.extend(homes(b"resource:a", 8));
        assert_eq!(count.own("resource:a", &all, |_| false), sorted(want));
        count.seen(8, start + FORMER_COUNTS_FOR + Duration::from_secs(1));
        assert_eq!(
            count.own("resource:a", &all, |_| false),
            sorted(homes(b"resource:a", 8).to_vec()),
            "forgotten once it is old"
        );
    }
}
