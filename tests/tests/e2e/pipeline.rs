//! End to end: HTTP -> ingest -> Kafka -> aggregator -> Redis/Postgres -> HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde_json::json;

use viewpipe_tests::chaos;
use viewpipe_tests::{Service, Stack};

const KEYS: usize = 25;
const DAYS: usize = 3;

/// The view `i` of a run: which key and which day it belongs to.
fn view(i: usize, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
    let at = now - chrono::Duration::days((i / KEYS % DAYS) as i64) - chrono::Duration::minutes(1);
    (format!("k{:02}", i % KEYS), at)
}

/// The expected daily counts of the given views.
fn expected_of(
    views: impl IntoIterator<Item = usize>,
    now: DateTime<Utc>,
) -> BTreeMap<(String, NaiveDate), i64> {
    let mut expected = BTreeMap::new();
    for i in views {
        let (id, at) = view(i, now);
        *expected.entry((id, at.date_naive())).or_insert(0) += 1;
    }
    expected
}

async fn post(http: &reqwest::Client, ingest: &Service, id: &str, at: DateTime<Utc>) -> u16 {
    let body = json!({"contentId": id, "contentType": "resource", "path": format!("/r/{id}"),
                      "occurredAt": at.to_rfc3339()});
    match http.post(ingest.url("/api/views")).json(&body).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_views_over_keys_and_days_are_counted_exactly() {
    const VIEWS: usize = 2000;
    let stack = Stack::start().await.expect("stack");
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "300")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let now = Utc::now();

    let statuses: Vec<u16> = futures::stream::iter(0..VIEWS)
        .map(|i| {
            let (http, ingest) = (&http, &ingest);
            async move {
                let (id, at) = view(i, now);
                post(http, ingest, &id, at).await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "every POST answers 202");

    let expected = expected_of(0..VIEWS, now);
    chaos::assert_exact(&stack, &ingest, &expected, Duration::from_secs(60)).await;
    println!(
        "{VIEWS} views over {KEYS} keys and {DAYS} days: every total, daily row and GET exact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregator_stopped_with_sigterm_mid_stream_loses_and_repeats_nothing() {
    const VIEWS: usize = 900;
    let stack = Stack::start().await.expect("stack");
    let first = stack
        .spawn_aggregator_process(&[("FLUSH_INTERVAL_MS", "1000")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let now = Utc::now();

    let sender = {
        let http = http.clone();
        let url = ingest.url("/api/views");
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for chunk in (0..VIEWS).collect::<Vec<_>>().chunks(30) {
                let posts = chunk.iter().map(|&i| {
                    let (id, at) = view(i, now);
                    let body = json!({"contentId": id, "contentType": "resource", "occurredAt": at.to_rfc3339()});
                    let (http, url) = (&http, &url);
                    async move { (i, http.post(url).json(&body).send().await.map(|r| r.status().as_u16())) }
                });
                for (i, status) in futures::future::join_all(posts).await {
                    if matches!(status, Ok(202)) {
                        accepted.push(i);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            accepted
        })
    };

    // Stopped once it counts: it owns its partitions (a rebalance was seen).
    let series = "viewpipe_aggregator_rebalances_total";
    chaos::wait_metric(&[&first], series, 1.0, Duration::from_secs(30), "joining").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = first
        .terminate(Duration::from_secs(20))
        .await
        .expect("clean exit");
    assert!(
        status.success(),
        "aggregator exits 0 after SIGTERM, got {status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "300")])
        .await
        .expect("restart");

    let accepted = sender.await.expect("sender");
    assert_eq!(accepted.len(), VIEWS, "the ingest accepted every view");
    let expected = expected_of(accepted.iter().copied(), now);
    chaos::assert_exact(&stack, &ingest, &expected, Duration::from_secs(60)).await;
    println!("{VIEWS} views with a SIGTERM and restart of the aggregator mid-stream: exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_counted_from_its_beginning() {
    // Postgres remembers positions from an earlier log (e.g. a restarted in-memory
    // broker, or a topic deleted and recreated): the new log's events must count.
    let stack = Stack::start().await.expect("stack");
    for partition in 0..viewpipe_tests::PARTITIONS {
        stack
            .rows(&format!(
                "INSERT INTO aggregator_partitions VALUES ('{}', 'views', {partition}, 50, 3, 1, now())
                 RETURNING topic, next_offset",
                stack.group
            ))
            .await
            .expect("seed position");
    }
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "300")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let now = Utc::now();
    for i in 0..40 {
        let (id, at) = view(i, now);
        assert_eq!(post(&http, &ingest, &id, at).await, 202);
    }
    let expected = expected_of(0..40, now);
    chaos::assert_exact(&stack, &ingest, &expected, Duration::from_secs(60)).await;
    println!("40 views on a log that restarted below the stored positions: exact");
}
