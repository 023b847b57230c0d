//! Exactly-once when the stores misbehave in ways a killed process does not show:
//! COMMIT replies lost on the way back. Each test starts the faulty part itself (a
//! proxy in front of the shared Postgres) and never breaks the shared servers.

use std::net::SocketAddr;

use viewpipe_tests::chaos::Load;
use viewpipe_tests::faults::{aggregators, kill_randomly, Running};
use viewpipe_tests::pgproxy::PgProxy;
use viewpipe_tests::Stack;

/// The host and port of a `postgres://` URL.
fn server_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("a literal host:port in the test database URL: {url}"))
}

/// The aggregators reach Postgres through a proxy that loses the reply of 30% of the
/// COMMITs: the transaction is in, the aggregator sees a broken connection and sends
/// the flush again. Meanwhile aggregators are killed with -9. Every view counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_replies_lost_through_kill_9s_count_exactly() {
    let stack = Stack::start().await.expect("stack");
    let proxy = PgProxy::start(server_of(&stack.db_url), 0.3)
        .await
        .expect("proxy");
    let proxied = proxy.url_for(&stack.db_url);
    let env = [("DATABASE_URL", proxied.as_str())];
    let mut aggs = aggregators(&stack, 2, &env).await;
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let load = Load {
        events: 12_000,
        keys: 200,
        days: 3,
        rate: 600.0,
        concurrency: 64,
    };
    let run = Running::begin(&stack, &ingest, load);
    let kills = kill_randomly(&stack, &mut aggs, 4, &env, &run.progress).await;
    run.end(&stack, &ingest, "COMMIT replies lost, kill -9 x4")
        .await;
    let (commits, lost) = proxy.counts();
    println!(
        "Postgres proxy: {lost} of {commits} COMMIT replies lost; kill -9 at acknowledged views {kills:?}"
    );
    assert!(lost >= 5, "the proxy lost only {lost} of {commits} replies");
    stack.cleanup().await.expect("cleanup");
}
