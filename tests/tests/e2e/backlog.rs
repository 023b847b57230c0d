//! A long backlog over many keys: 500k events over 200k keys already in the log when
//! the aggregator starts. It must finish, exact, with its memory bounded (pending
//! keys past a cap pause polling until the flush in flight lands).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{Duration as Days, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};

use viewpipe_tests::Stack;

const EVENTS: usize = 500_000;
const KEYS: usize = 200_000;
/// Peak RSS the aggregator must stay under (a debug build; release is smaller).
const MAX_RSS_MIB: u64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_500k_events_over_200k_keys_finishes_exactly_in_bounded_memory() {
    let stack = Stack::start().await.expect("stack");
    let producer: FutureProducer = viewpipe_runtime::kafka::producer_config(&stack.kafka())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let today = Utc::now().date_naive();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..EVENTS {
        let key = format!("b{:06}", (i * 7919) % KEYS);
        let day = today - Days::days((i % 3) as i64);
        let full_key = format!("resource:{key}");
        *expected.entry(full_key.clone()).or_default() += 1;
        let payload = format!(
            r#"{{"v":1,"contentType":"resource","contentId":"{key}","occurredAt":"{day}T12:00:00Z"}}"#
        );
        let record = FutureRecord::to("views").key(&full_key).payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("produce: {e}"),
        }
        if pending.len() == 10_000 {
            for d in pending.drain(..) {
                d.await.expect("delivery").expect("acknowledged");
            }
        }
    }
    for d in pending.drain(..) {
        d.await.expect("delivery").expect("acknowledged");
    }
    let produced_in = started.elapsed();

    let started = Instant::now();
    let aggregator = stack
        .spawn_aggregator_process(&[])
        .await
        .expect("aggregator");
    stack
        .wait_flushed_total(EVENTS as i64, Duration::from_secs(600))
        .await
        .expect("every event flushed");
    let counted_in = started.elapsed();
    let peak = aggregator.peak_rss_kib().expect("peak RSS") / 1024;

    let rows = stack.totals().await.expect("totals");
    assert_eq!(rows.len(), KEYS, "one total row per key");
    assert!(
        rows == expected,
        "every key's total is its number of events"
    );
    let daily = stack
        .rows("SELECT '', COALESCE(sum(count), 0)::int8 FROM view_counter_daily")
        .await
        .expect("daily");
    assert_eq!(daily[0].1, EVENTS as i64, "daily rows add up");
    println!(
        "backlog: {EVENTS} events over {KEYS} keys produced in {:.1} s, counted and flushed in {:.1} s; peak RSS {peak} MiB",
        produced_in.as_secs_f64(),
        counted_in.as_secs_f64()
    );
    assert!(peak < MAX_RSS_MIB, "peak RSS {peak} MiB");
}
