//! The pipeline on a Redis Cluster (`REDIS_URL=redis+cluster://...`): three private
//! primaries started by the test, the ingest and two aggregators on them, a reader
//! watching throughout, exact at the end; and the same with the cluster losing its
//! keys, one node restarted empty and then every node flushed.

use viewpipe_tests::chaos::{self, Load};
use viewpipe_tests::faults::{aggregators, Running, RECOVERY};
use viewpipe_tests::redis_server::RedisCluster;
use viewpipe_tests::{Service, Stack};

use std::time::Duration;

const LOAD: Load = Load {
    events: 8_000,
    keys: 200,
    days: 3,
    rate: 500.0,
    concurrency: 64,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_on_a_three_node_redis_cluster_counts_exactly() {
    let cluster = RedisCluster::start(3).await.expect("cluster");
    let stack = Stack::start()
        .await
        .expect("stack")
        .with_redis(&cluster.url());
    let aggs = aggregators(&stack, 2, &[]).await;
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let run = Running::begin(&stack, &ingest, LOAD);
    run.progress.reached(LOAD.events / 2).await;
    // The pending state is spread over the nodes, not on one of them.
    let spread = cluster.key_counts().await.expect("key counts");
    run.end(&stack, &ingest, "Redis Cluster of 3 primaries")
        .await;
    println!("keys per cluster node at half the load: {spread:?}");
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "pending keys on at least two nodes: {spread:?}"
    );
    let restores = chaos::metric_sum(&aggs, "viewpipe_aggregator_redis_restores_total").await;
    assert_eq!(restores, 0.0, "nothing was lost, nothing restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_cluster_losing_a_node_and_then_everything_is_recovered_exactly() {
    let mut cluster = RedisCluster::start(3).await.expect("cluster");
    let stack = Stack::start()
        .await
        .expect("stack")
        .with_redis(&cluster.url());
    // A long flush interval keeps plenty of counts pending when Redis loses them.
    let aggs = aggregators(&stack, 2, &[("FLUSH_INTERVAL_MS", "3000")]).await;
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let run = Running::begin(&stack, &ingest, LOAD);

    run.progress.reached(LOAD.events * 3 / 10).await;
    // Both aggregators own their partitions and have flushed: what the node loses
    // is the state of running owners (a loss before the claims is no loss at all).
    for agg in &aggs {
        let series = "viewpipe_aggregator_flushed_rows_total";
        chaos::wait_metric(&[agg], series, 1.0, Duration::from_secs(30), "a flush").await;
    }
    run.progress.recovery_window(RECOVERY);
    let before = cluster.key_counts().await.expect("key counts");
    let node = (0..before.len()).max_by_key(|i| before[*i]).expect("nodes");
    cluster.restart_node(node).await.expect("restart a node");
    let after = cluster.key_counts().await.expect("key counts");
    println!("node {node} restarted empty: keys per node {before:?} -> {after:?}");
    // Its partitions' owners notice on their next write and restore them.
    let all: Vec<&Service> = aggs.iter().collect();
    let restores = "viewpipe_aggregator_redis_restores_total";
    let noticed = chaos::wait_metric(
        &all,
        restores,
        1.0,
        Duration::from_secs(30),
        "a restore after the node restart",
    )
    .await;

    run.progress.reached(LOAD.events * 6 / 10).await;
    run.progress.recovery_window(RECOVERY);
    // The owners must have restored what the node lost before Redis loses it again:
    // a partition not yet marked live has nothing more to lose, and its restore
    // writes it all back anyway.
    wait_all_live(&stack, Duration::from_secs(30)).await;
    let before_flushall = chaos::metric_sum(&aggs, restores).await;
    cluster.flush_all().await.expect("flushall");
    // The owners notice this loss too (on a write, or the live check of an idle
    // partition), whether or not the load is still running when it happens.
    let after_flushall = chaos::wait_metric(
        &all,
        restores,
        before_flushall + 1.0,
        Duration::from_secs(30),
        "a restore after the FLUSHALL",
    )
    .await;

    run.end(
        &stack,
        &ingest,
        "Redis Cluster: a node restarted empty, then FLUSHALL",
    )
    .await;
    let total = chaos::metric_sum(&aggs, restores).await;
    println!(
        "partition restores: {noticed} noticed after the node restart, {before_flushall} \
         before the FLUSHALL, {after_flushall} once it was noticed, {total} in all"
    );
}

/// Waits until Redis marks every partition live again (its owner restored it).
async fn wait_all_live(stack: &Stack, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (conn, keys) = stack.redis_keys().await.expect("keys");
        let metas: Vec<String> = keys.into_iter().filter(|k| k.ends_with(":m")).collect();
        let live: Vec<Option<i64>> = conn
            .per_partition(&metas, true, String::clone, |pipe, key| {
                pipe.cmd("HGET").arg(key).arg("live");
            })
            .await
            .map(|values| {
                values
                    .into_iter()
                    .map(|v| redis::from_redis_value(v).unwrap_or(None))
                    .collect()
            })
            .unwrap_or_default();
        let marked = live.iter().filter(|l| l.is_some()).count();
        if marked == viewpipe_tests::PARTITIONS as usize {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {marked} of {} partitions marked live again after {within:?}",
            viewpipe_tests::PARTITIONS
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same over TLS: `rediss+cluster://` with `REDIS_TLS_CA`, nodes that talk TLS
/// to clients and to each other. Clients find the other nodes from the cluster's
/// own answers, so the CA must reach every connection the cluster client opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_on_a_tls_redis_cluster_counts_exactly() {
    let certs = viewpipe_tests::tls::TestCerts::new("cluster").expect("certs");
    let cluster = RedisCluster::start_tls(3, &certs)
        .await
        .expect("TLS cluster");
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let stack = Stack::start().await.expect("stack").with_redis(&url);
    let ca = certs.ca.display().to_string();
    let env = [("REDIS_TLS_CA", ca.as_str())];
    let _aggregator = stack.spawn_aggregator(&env).await.expect("aggregator");
    let ingest = stack.spawn_ingest(&env).await.expect("ingest");
    let load = Load {
        events: 3_000,
        keys: 100,
        days: 2,
        rate: 600.0,
        concurrency: 16,
    };
    let run = Running::begin(&stack, &ingest, load);
    run.progress.reached(load.events / 2).await;
    let spread = cluster.key_counts().await.expect("key counts");
    run.end(&stack, &ingest, "TLS Redis Cluster of 3 primaries")
        .await;
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "pending keys on at least two nodes: {spread:?}"
    );
}
