//! Rolling upgrades (docs/upgrades.md): the previous release's binaries keep working
//! on this release's schema, whose newer migrations are additive, side by side with
//! this release's binaries; a breaking newer migration stops older binaries with a
//! clear error instead.
//!
//! The previous release is built by `deploy/local/previous` (the README's test
//! command runs it) from the commit named in `deploy/local/previous-release`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde_json::json;

use viewpipe_tests::{chaos, Kind, Service, Stack};

const KEYS: usize = 12;
const DAYS: usize = 2;

fn view(i: usize, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
    let at = now - chrono::Duration::days((i / KEYS % DAYS) as i64) - chrono::Duration::minutes(1);
    (format!("u{:02}", i % KEYS), at)
}

/// Posts views `range` to `ingest`, every third with a session id; all must be 202.
async fn post_all(http: &reqwest::Client, ingest: &Service, range: std::ops::Range<usize>) {
    let now = Utc::now();
    let statuses: Vec<u16> = futures::stream::iter(range)
        .map(|i| async move {
            let (id, at) = view(i, now);
            let mut body = json!({"contentId": id, "contentType": "resource",
                                  "occurredAt": at.to_rfc3339()});
            if i % 3 == 0 {
                body["sessionId"] = json!(format!("s{}", i % 40));
            }
            match http.post(ingest.url("/api/views")).json(&body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let refused = statuses.iter().filter(|s| **s != 202).count();
    assert_eq!(
        refused,
        0,
        "views refused by {}: {statuses:?}",
        ingest.url("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn previous_release_binaries_count_exactly_on_the_new_schema() {
    const VIEWS: usize = 1200;
    let previous = viewpipe_tests::previous_release();
    let stack = Stack::start().await.expect("stack");

    // The previous release's `aggregator migrate` finds the schema ahead of it by
    // additive migrations and leaves it alone.
    let (code, out, err) = stack
        .command_of(&previous.join("aggregator"), &["migrate"])
        .await
        .expect("previous migrate");
    assert_eq!(
        code, 0,
        "previous `aggregator migrate` on the new schema: {out}{err}"
    );
    assert!(
        format!("{out}{err}").contains("ahead of this build by additive migrations"),
        "{out}{err}"
    );

    // A mixed fleet, as in the middle of a rollout: an old and a new aggregator in
    // one group, an old ingest and a new one.
    let flush = [("FLUSH_INTERVAL_MS", "300")];
    let old_aggregator = stack
        .spawn_process_of(Kind::Aggregator, &previous.join("aggregator"), &flush)
        .await
        .expect("previous aggregator starts on the new schema");
    let _new_aggregator = stack
        .spawn_aggregator_process(&flush)
        .await
        .expect("new aggregator");
    let old_ingest = stack
        .spawn_process_of(Kind::Ingest, &previous.join("ingest"), &[])
        .await
        .expect("previous ingest starts on the new schema");
    let new_ingest = stack.spawn_ingest(&[]).await.expect("new ingest");
    let http = reqwest::Client::new();

    post_all(&http, &old_ingest, 0..VIEWS / 4).await;
    post_all(&http, &new_ingest, VIEWS / 4..VIEWS / 2).await;
    // An old pod restarts mid-rollout (killed, then started again): it must come
    // back on the newer schema.
    old_aggregator.kill9().await.expect("kill -9");
    let _old_again = stack
        .spawn_process_of(Kind::Aggregator, &previous.join("aggregator"), &flush)
        .await
        .expect("previous aggregator restarts on the new schema");
    post_all(&http, &old_ingest, VIEWS / 2..3 * VIEWS / 4).await;
    post_all(&http, &new_ingest, 3 * VIEWS / 4..VIEWS).await;

    let now = Utc::now();
    let mut expected: BTreeMap<(String, NaiveDate), i64> = BTreeMap::new();
    for i in 0..VIEWS {
        let (id, at) = view(i, now);
        *expected.entry((id, at.date_naive())).or_default() += 1;
    }
    chaos::assert_exact(&stack, &new_ingest, &expected, Duration::from_secs(90)).await;
    // The old ingest serves the same counts.
    chaos::assert_exact(&stack, &old_ingest, &expected, Duration::from_secs(10)).await;
    println!(
        "previous release {} on schema with newer additive migrations: migrate left it alone; \
         old + new aggregators (old one killed -9 and restarted) and old + new ingests counted \
         {VIEWS} views over {KEYS} keys and {DAYS} days exactly; the old ingest's GETs agree",
        previous.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_breaking_migration_stops_this_build_with_a_clear_error() {
    let stack = Stack::start().await.expect("stack");
    let future = "m29991231_000001_future_change";
    stack
        .rows(&format!(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{future}', 0) \
             RETURNING version, 0::int8"
        ))
        .await
        .expect("a newer migration");

    // Unrecorded: nobody said it is additive, so it counts as breaking.
    let refused = stack
        .spawn_ingest(&[])
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .expect("the ingest must refuse an unrecorded newer migration");
    assert!(
        refused.contains("breaking") && refused.contains(future),
        "{refused}"
    );
    let (code, out, err) = stack
        .command("aggregator", &["migrate"])
        .await
        .expect("migrate");
    assert_ne!(code, 0, "migrate must refuse: {out}{err}");
    assert!(format!("{out}{err}").contains(future), "{out}{err}");

    // Recorded as breaking: still refused.
    stack
        .rows(&format!(
            "INSERT INTO schema_changes (migration, additive) VALUES ('{future}', false) \
             RETURNING migration, 0::int8"
        ))
        .await
        .expect("record");
    assert!(stack.spawn_ingest(&[]).await.is_err(), "breaking: refused");
    assert!(
        stack.spawn_aggregator(&[]).await.is_err(),
        "breaking: the aggregator refuses too"
    );

    // Recorded as additive: this build runs on it.
    stack
        .rows(&format!(
            "UPDATE schema_changes SET additive = true WHERE migration = '{future}' \
             RETURNING migration, 0::int8"
        ))
        .await
        .expect("record");
    let ingest = stack
        .spawn_ingest(&[])
        .await
        .expect("runs on an additive newer schema");
    let _aggregator = stack.spawn_aggregator(&[]).await.expect("aggregator too");
    let status = reqwest::Client::new()
        .post(ingest.url("/api/views"))
        .json(&json!({"contentType": "resource", "contentId": "x"}))
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, 202);
    stack
        .wait_flushed_total(1, Duration::from_secs(30))
        .await
        .expect("counted");
    println!(
        "a newer migration unrecorded or recorded breaking: ingest, aggregator and migrate \
         refuse, naming it; recorded additive: both run and count"
    );
}
