//! The log changing under the count.
//! - Running ahead: retention deletes events an aggregator has not counted yet (here
//!   the dev broker, which keeps a few MiB per partition). The aggregator must not
//!   jump to the log start and carry on: it holds the partition, says so on
//!   `/readyz`, and skips nothing until the operator moves the position.
//! - Recreated: the topic is created again (here the dev broker restarted) and grows
//!   past the old position before an aggregator claims it: all of it is counted.
//! - Losing its tail: the log ends before the position while its start is the log
//!   that was counted: held and reported, nothing counted twice.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use viewpipe_tests::Stack;

/// Produces `n` valid events with long random ids (so they compress poorly).
async fn produce(producer: &FutureProducer, n: usize) {
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        let id = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let payload = format!(
            r#"{{"v":1,"contentType":"resource","contentId":"{id}","occurredAt":"{}"}}"#,
            chrono::Utc::now().to_rfc3339()
        );
        let record = FutureRecord::to("views").key("k").payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
    for d in pending {
        d.await.expect("delivery").expect("acknowledged");
    }
}

fn watermarks(stack: &Stack) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.broker.addr().to_string())
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks("views", 0, Duration::from_secs(5))
        .expect("watermarks")
}

fn producer(stack: &Stack) -> FutureProducer {
    viewpipe_runtime::kafka::producer_config(&stack.kafka())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Counts `n` events with a first aggregator, which then stops.
async fn count_first(stack: &Stack, n: usize) {
    produce(&producer(stack), n).await;
    let aggregator = stack
        .spawn_aggregator_process(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    stack
        .wait_flushed_total(n as i64, Duration::from_secs(60))
        .await
        .expect("first events flushed");
    aggregator
        .terminate(Duration::from_secs(20))
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_log_that_grew_past_the_position_is_counted_from_its_beginning() {
    let mut stack = Stack::with_partitions(1).await.expect("stack");
    count_first(&stack, 1_000).await;

    // The broker restarts empty (the dev broker keeps its logs in memory): the
    // topic is created again, and grows past offset 1000 before an aggregator runs.
    stack.broker.restart().await.expect("broker restarted");
    for topic in ["views", "views.replay", "views.dlq"] {
        stack.broker.create_topic(topic, 1).expect("topic");
    }
    produce(&producer(&stack), 1_500).await;

    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    stack
        .wait_flushed_total(2_500, Duration::from_secs(60))
        .await
        .expect("every event of the new log counted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.flushed_total().await.expect("total"), 2_500);
    println!("recreated log: 1000 counted in the old log, all 1500 of the new one counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_that_lost_counted_events_is_held_and_reported_not_counted_again() {
    let stack = Stack::with_partitions(1).await.expect("stack");
    count_first(&stack, 1_000).await;

    // Postgres' position is now 300 past the log's end, while the log's start is the
    // one counted: what an aggregator finds after an unclean leader election dropped
    // the last 300 counted events.
    let group = &stack.group;
    stack
        .rows(&format!(
            "UPDATE aggregator_partitions SET next_offset = next_offset + 300
             WHERE consumer_group = '{group}' RETURNING '', next_offset"
        ))
        .await
        .expect("move the position");
    let aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let said = aggregator.readyz_until("log_truncated").await;
    assert!(said.contains("log_truncated"), "/readyz says so: {said}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.flushed_total().await.expect("total"),
        1_000,
        "nothing counted again"
    );

    // The operator's way forward (docs/operations.md, ViewpipeLogTruncated): resume at the log's end,
    // without checking the last counted message once.
    let (_, end) = watermarks(&stack);
    stack
        .rows(&format!(
            "UPDATE aggregator_partitions SET next_offset = {end}, last_mark = NULL,
               flushed_gen = flushed_gen + 2
             WHERE consumer_group = '{group}' RETURNING '', next_offset"
        ))
        .await
        .expect("resume at the log end");
    produce(&producer(&stack), 200).await;
    stack
        .wait_flushed_total(1_200, Duration::from_secs(60))
        .await
        .expect("new events counted after the operator's update");
    aggregator
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("ready again");
    println!("log lost its tail: held and reported as log_truncated with Postgres at 1000; 200 new events counted after the operator's update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_deleted_before_they_were_counted_hold_the_partition_and_say_so() {
    let stack = Stack::with_partitions(1).await.expect("stack");
    let producer: FutureProducer = viewpipe_runtime::kafka::producer_config(&stack.kafka())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    produce(&producer, 1_000).await;
    let aggregator = stack
        .spawn_aggregator_process(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    stack
        .wait_flushed_total(1_000, Duration::from_secs(60))
        .await
        .expect("first 1000 flushed");
    aggregator.kill9().await.expect("kill -9");

    // While no aggregator runs, the log moves past offset 1000.
    let mut rounds = 0;
    while watermarks(&stack).0 <= 1_000 {
        rounds += 1;
        assert!(rounds <= 40, "the dev broker kept everything");
        produce(&producer, 20_000).await;
    }
    let (low, high) = watermarks(&stack);

    let aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let said = aggregator.readyz_until("log_ahead").await;
    assert!(said.contains("log_ahead"), "/readyz says so: {said}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let position = stack
        .rows(&format!(
            "SELECT '', next_offset FROM aggregator_partitions WHERE consumer_group = '{}'",
            stack.group
        ))
        .await
        .expect("position");
    assert_eq!(
        position[0].1, 1_000,
        "nothing skipped: Postgres still at 1000"
    );
    let flushed = stack.flushed_total().await.expect("total");
    assert_eq!(flushed, 1_000, "nothing counted past the gap");

    // The operator accepts the loss (docs/operations.md, ViewpipeLogAhead): the position moves to the
    // log start and counting resumes there.
    stack
        .rows(&format!(
            "UPDATE aggregator_partitions SET next_offset = {low}, flushed_gen = flushed_gen + 2
             WHERE consumer_group = '{}' RETURNING '', next_offset",
            stack.group
        ))
        .await
        .expect("move the position");
    stack
        .wait_flushed_total(1_000 + (high - low), Duration::from_secs(120))
        .await
        .expect("the rest of the log counted");
    println!(
        "log ahead: events 1000..{low} deleted before they were counted; held and reported, then {} counted from {low} after the operator moved the position",
        high - low
    );
}
