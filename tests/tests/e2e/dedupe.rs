//! Contract guarantee 3 and the DLQ: the same `eventId` of a key counts once (posted
//! through the API or produced to Kafka directly), and messages the aggregator cannot
//! use are parked in the DLQ with an `error` header while their partition moves on.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sea_orm::ConnectionTrait;
use serde_json::json;

use viewpipe_tests::chaos::metric;
use viewpipe_tests::Stack;

const IDS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_event_ids_count_once_and_poison_goes_to_the_dlq() {
    let stack = Stack::start().await.expect("stack");
    let aggregator = stack
        .spawn_aggregator_process(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let at = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();

    // Through the API: each of 100 eventIds posted 3 times, concurrently.
    let statuses: Vec<u16> = futures::stream::iter(0..IDS * 3)
        .map(|i| {
            let (http, url, at) = (&http, ingest.url("/api/views"), &at);
            async move {
                let body = json!({"contentId": "dup", "contentType": "resource",
                                  "eventId": format!("e{}", i % IDS), "occurredAt": at});
                http.post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    // Straight to Kafka: the same 100 ids again, 50 new ones, then poison, then one
    // more valid event behind the poison on the same partition.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.broker.addr().to_string())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let event = |id: String| {
        json!({"v": 1, "eventId": id, "contentType": "resource", "contentId": "dup",
               "path": null, "sessionId": null, "occurredAt": at, "receivedAt": at})
        .to_string()
    };
    let mut payloads: Vec<Option<String>> = (0..IDS + 50)
        .map(|i| Some(event(format!("e{i}"))))
        .collect();
    let poison = [
        Some("not json at all".to_owned()),
        Some(json!({"v": 2, "contentType": "resource", "contentId": "dup"}).to_string()),
        Some(event("bad".into()).replace("\"dup\"", "\"no spaces allowed\"")),
        None,
    ];
    payloads.extend(poison.iter().cloned());
    payloads.push(Some(event("after-poison".into())));
    for payload in &payloads {
        let mut record = FutureRecord::<str, str>::to("views").key("resource:dup");
        if let Some(p) = payload {
            record = record.payload(p.as_str());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    let want = (IDS + 50 + 1) as i64;
    stack
        .wait_flushed_total(want, Duration::from_secs(30))
        .await
        .expect("flushed");
    let counted = metric(
        &aggregator,
        "viewpipe_aggregator_events_total{result=\"counted\"}",
    )
    .await;
    let duplicates = metric(
        &aggregator,
        "viewpipe_aggregator_events_total{result=\"duplicate\"}",
    )
    .await;
    let invalid = metric(
        &aggregator,
        "viewpipe_aggregator_events_total{result=\"invalid\"}",
    )
    .await;
    assert_eq!(
        (counted, duplicates, invalid),
        (want as f64, (IDS * 3) as f64, poison.len() as f64),
        "counted, duplicate, invalid"
    );

    // The DLQ holds exactly the poison, each with the reason in its `error` header.
    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.broker.addr().to_string())
        .set("group.id", format!("{}-dlq-reader", stack.group))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dlq consumer");
    let mut all = rdkafka::TopicPartitionList::new();
    for p in 0..viewpipe_tests::PARTITIONS {
        all.add_partition_offset("views.dlq", p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    dlq.assign(&all).expect("assign");
    let mut parked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while parked.len() < poison.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let error = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "error"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            parked.push((
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
                error,
            ));
        }
    }
    assert_eq!(parked.len(), poison.len(), "DLQ messages: {parked:?}");
    for (payload, error) in &parked {
        assert!(
            poison.contains(payload),
            "unexpected DLQ message {payload:?}"
        );
        assert!(
            error.as_ref().is_some_and(|e| !e.is_empty()),
            "no error header on {payload:?}"
        );
    }
    let reasons: Vec<&str> = parked.iter().filter_map(|(_, e)| e.as_deref()).collect();
    println!(
        "dedupe: {} events with {want} distinct eventIds counted {want}; {} duplicates refused; \
         DLQ: {} poison messages parked ({reasons:?}), partition moved on",
        IDS * 3 + IDS + 50 + 1,
        IDS * 3,
        parked.len()
    );
    // Close the Kafka clients while their broker still runs.
    drop((producer, dlq));
}

/// Guarantee 3 in event time: a client's retry, consumed after its id's row is more
/// than 24 h old by the clock of consumption (as a lagging consumer, a held
/// partition or a Postgres restore leave it), carries the same `occurredAt` and is
/// still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_consumed_more_than_a_day_after_the_first_counts_once() {
    let stack = Stack::start().await.expect("stack");
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let at = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let post = |event_id: &'static str| {
        let body = json!({"contentId": "late", "contentType": "resource",
                          "eventId": event_id, "occurredAt": at});
        let request = http.post(ingest.url("/api/views")).json(&body).send();
        async move { request.await.map_or(0, |r| r.status().as_u16()) }
    };
    assert_eq!(post("E1").await, 202);
    stack
        .wait_flushed_total(1, Duration::from_secs(30))
        .await
        .expect("flushed");
    stack
        .db
        .execute_unprepared("UPDATE view_event_ids SET seen_at = seen_at - interval '25 hours'")
        .await
        .expect("age the id row");
    // The retry, then a marker view behind it on the same key (and partition).
    assert_eq!(post("E1").await, 202);
    assert_eq!(post("E2").await, 202);
    stack
        .wait_flushed_total(2, Duration::from_secs(30))
        .await
        .expect("the retry is not counted, the marker is");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stack.flushed_total().await.expect("total"), 2);
    println!("a retry consumed 25 h after its first sighting (same occurredAt): counted 0 times; total 2 with the marker");
}
