//! A Postgres connection that goes silent (guarantee 2): a proxy in front of the
//! shared Postgres forwards a flush's COMMIT, then lets nothing more reach the
//! aggregator on that connection while keeping its socket open, as a NAT, a load
//! balancer or a failover that dropped the flow does (no FIN, no RST). Counting must
//! recover by itself, every acknowledged view must reach Postgres within 30 s, and
//! the stuck dependency must show on `/readyz` and in a metric meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use viewpipe_tests::chaos::metric;
use viewpipe_tests::pgproxy::{server_of, Loss, PgProxy};
use viewpipe_tests::{Service, Stack};

const VIEWS: usize = 1_200;
const KEYS: usize = 20;

/// Watches the aggregator's `/readyz` until `stop`; true once it named
/// `postgres_silent`.
fn watch_readiness(aggregator: &Service, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<bool> {
    let url = aggregator.url("/readyz");
    tokio::spawn(async move {
        let mut seen = false;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(r) = reqwest::get(&url).await {
                seen |= r.text().await.is_ok_and(|t| t.contains("postgres_silent"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_silent_after_commit_keeps_no_view_out_of_postgres_for_30_s() {
    let stack = Stack::start().await.expect("stack");
    // Every third COMMIT is answered into the void, twice in the run.
    let proxy = PgProxy::start_with(server_of(&stack.db_url), 3, 2, Loss::Silent)
        .await
        .expect("proxy");
    let proxied = proxy.url_for(&stack.db_url);
    let aggregator = stack
        .spawn_aggregator_process(&[
            ("DATABASE_URL", proxied.as_str()),
            ("FLUSH_INTERVAL_MS", "250"),
        ])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let stop = Arc::new(AtomicBool::new(false));
    let readiness = watch_readiness(&aggregator, stop.clone());

    // About 10 s of views, 20 keys.
    let http = reqwest::Client::new();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..VIEWS {
        let id = format!("k{}", i % KEYS);
        let status = http
            .post(ingest.url("/api/views"))
            .json(&json!({"contentType": "resource", "contentId": id}))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        assert_eq!(status, 202, "view {i} acknowledged");
        *expected.entry(format!("resource:{id}")).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    let last_ack = Instant::now();
    let flushed = stack
        .wait_flushed_total(VIEWS as i64, Duration::from_secs(30))
        .await;
    let took = last_ack.elapsed();
    stop.store(true, Ordering::Relaxed);
    let named_on_readyz = readiness.await.expect("readiness watch");
    let (commits, silenced) = proxy.counts();
    let timeouts = metric(
        &aggregator,
        "viewpipe_store_timeouts_total{store=\"postgres\"}",
    )
    .await;
    println!(
        "silent Postgres connection: {silenced} of {commits} COMMIT replies swallowed with the socket kept open; \
         {VIEWS} acknowledged views in Postgres {:.1} s after the last one (bound 30 s); \
         {timeouts} round trip(s) timed out; /readyz named postgres_silent: {named_on_readyz}",
        took.as_secs_f64()
    );
    flushed.expect("every acknowledged view in Postgres within 30 s of the last");
    assert_eq!(silenced, 2, "the proxy silenced two COMMIT replies");
    assert_eq!(
        stack.totals().await.expect("totals"),
        expected,
        "exact per key"
    );
    assert!(
        timeouts >= 1.0,
        "the timed-out flush is counted in a metric"
    );
    assert!(
        named_on_readyz,
        "/readyz named the silent Postgres meanwhile"
    );
}
