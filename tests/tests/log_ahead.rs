//! The log running ahead of the count: retention deletes events an aggregator has
//! not counted yet (here the dev broker, which keeps a few MiB per partition). The
//! aggregator must not jump to the log start and carry on: it holds the partition,
//! says so on `/readyz`, and skips nothing until the operator moves the position.

use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_deleted_before_they_were_counted_hold_the_partition_and_say_so() {
    let stack = Stack::with_partitions(1).await.expect("stack");
    let producer: FutureProducer =
        viewpipe_runtime::kafka::producer_config(&stack.broker.addr().to_string())
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
    produce(&producer, 1_000).await;
    let aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
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
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = String::new();
    while Instant::now() < deadline {
        let answer = http.get(aggregator.url("/readyz")).send().await;
        if let Ok(answer) = answer {
            said = answer.text().await.unwrap_or_default();
            if said.contains("log_ahead") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    // The operator accepts the loss (docs/exactly-once.md): the position moves to the
    // log start and counting resumes there.
    stack
        .rows(&format!(
            "UPDATE aggregator_partitions SET next_offset = {low}
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
    stack.cleanup().await.expect("cleanup");
}
