//! Rolling deploys (guarantee 1): while ingests and aggregators run with different
//! settings or releases, every view an ingest acknowledged, and every countable
//! event produced to `views` directly, is counted. Edge rules (`NAMESPACES`, field
//! lengths) are the ingest's; an aggregator refuses only what it cannot count.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use viewpipe_tests::chaos::metric;
use viewpipe_tests::{Kind, Service, Stack};

/// Posts `n` views of `contentType:contentId`; returns how many were answered 202.
async fn post(ingest: &Service, content_type: &str, content_id: &str, n: usize) -> usize {
    let http = reqwest::Client::new();
    let mut acknowledged = 0;
    for _ in 0..n {
        let body = json!({"contentType": content_type, "contentId": content_id});
        let status = http
            .post(ingest.url("/api/views"))
            .json(&body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        acknowledged += usize::from(status == 202);
    }
    acknowledged
}

/// Waits for Postgres to hold `want` views in all, then returns every key's total.
async fn settled_totals(stack: &Stack, want: i64) -> BTreeMap<String, i64> {
    stack
        .wait_flushed_total(want, Duration::from_secs(30))
        .await
        .expect("every acknowledged view in Postgres");
    stack.totals().await.expect("totals")
}

/// An ingest rolled out first with a new namespace, beside aggregators that were
/// never told of it; and events other releases or producers write that this
/// ingest's rules would refuse. Every one of them counts, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingest_ahead_of_its_aggregators_counts_every_view_it_acknowledged() {
    let stack = Stack::start().await.expect("stack");
    let aggregator = stack
        .spawn_aggregator_process(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let ingest = stack
        .spawn_ingest(&[("NAMESPACES", "resource,video")])
        .await
        .expect("ingest");
    assert_eq!(
        post(&ingest, "video", "v1", 5).await,
        5,
        "video views acknowledged"
    );
    assert_eq!(
        post(&ingest, "resource", "r1", 5).await,
        5,
        "resource views acknowledged"
    );

    let at = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let long_id = "x".repeat(300);
    let long_event_id = "e".repeat(200);
    let event = |extra: Value| {
        let mut e = json!({"v": 1, "contentType": "resource", "contentId": "p", "occurredAt": at});
        if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
            e.extend(extra.clone());
        }
        e
    };
    stack
        .produce(
            "views",
            &[
                // A namespace no ingest takes yet, and an id longer than this ingest's.
                event(json!({"contentType": "podcast", "contentId": "ep-1"})),
                event(json!({"contentId": long_id})),
                // Fields this release's validation refuses, written by others.
                event(json!({"path": "/".repeat(5000)})),
                event(json!({"visitorId": ""})),
                event(json!({"sessionId": "s\u{7}"})),
                event(json!({"eventId": long_event_id})),
                // The same long eventId again: a retry, counted once.
                event(json!({"eventId": long_event_id})),
            ],
        )
        .await;

    let totals = settled_totals(&stack, 16).await;
    let expected: BTreeMap<String, i64> = [
        ("video:v1".to_owned(), 5),
        ("resource:r1".to_owned(), 5),
        ("podcast:ep-1".to_owned(), 1),
        (format!("resource:{long_id}"), 1),
        ("resource:p".to_owned(), 4),
    ]
    .into_iter()
    .collect();
    assert_eq!(totals, expected);
    let path_len = stack
        .rows("SELECT key, length(path)::int8 FROM view_counter_total WHERE key = 'resource:p'")
        .await
        .expect("path");
    assert_eq!(
        path_len,
        vec![("resource:p".to_owned(), 2048)],
        "a long path is cut, not refused"
    );
    let invalid = metric(
        &aggregator,
        "viewpipe_aggregator_events_total{result=\"invalid\"}",
    )
    .await;
    let duplicate = metric(
        &aggregator,
        "viewpipe_aggregator_events_total{result=\"duplicate\"}",
    )
    .await;
    assert_eq!((invalid, duplicate), (0.0, 1.0), "invalid, duplicate");
    let read: Value = reqwest::get(ingest.url("/api/views?contentType=video&contentId=v1"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(read["count"], 5);
    println!(
        "ingest ahead (NAMESPACES=resource,video beside an aggregator with none): 10 of 10 acknowledged views counted, \
         7 direct events outside this ingest's rules counted as 6 (one eventId retry), 0 to the DLQ"
    );
}

/// The aggregator rolled out first: the previous release's ingest, with its own
/// `NAMESPACES`, beside this release's aggregator and an ingest of this release
/// that takes fewer namespaces. Every acknowledged view counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aggregator_ahead_of_its_ingests_counts_what_older_ingests_acknowledged() {
    let previous = viewpipe_tests::previous_release();
    let stack = Stack::start().await.expect("stack");
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let old = stack
        .spawn_process_of(
            Kind::Ingest,
            &previous.join("ingest"),
            &[("NAMESPACES", "resource,video")],
        )
        .await
        .expect("previous release's ingest");
    let new = stack
        .spawn_ingest(&[("NAMESPACES", "resource")])
        .await
        .expect("ingest");
    assert_eq!(
        post(&old, "video", "v1", 5).await,
        5,
        "the old ingest acknowledged"
    );
    assert_eq!(
        post(&new, "resource", "r1", 5).await,
        5,
        "the new ingest acknowledged"
    );
    assert_eq!(
        post(&new, "video", "v1", 1).await,
        0,
        "the new ingest refuses video"
    );
    let totals = settled_totals(&stack, 10).await;
    assert_eq!(totals.get("video:v1"), Some(&5), "{totals:?}");
    assert_eq!(totals.get("resource:r1"), Some(&5), "{totals:?}");
    println!(
        "aggregator ahead (previous release's ingest with NAMESPACES=resource,video, this release's with resource): \
         10 of 10 acknowledged views counted"
    );
}

/// Cooperative rebalancing would deliver increments to eager callbacks: refused at
/// start-up, in one line naming the property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_rebalancing_is_refused_at_start_up_naming_the_property() {
    let stack = Stack::start().await.expect("stack");
    for property in [
        "partition.assignment.strategy=cooperative-sticky",
        "group.protocol=consumer",
    ] {
        let (code, _, err) = stack
            .command("aggregator", &["run", "--kafka-property", property])
            .await
            .expect("aggregator");
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("{property} is not supported")),
            "{err}"
        );
        println!("aggregator with {property}: exit {code}: {}", err.trim());
    }
}
