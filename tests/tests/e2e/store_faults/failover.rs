//! A lagging Redis replica promoted behind the address every service uses: it holds
//! the partition's live mark and fence, but fewer counts than readers already saw.

use std::time::{Duration, Instant};

use viewpipe_tests::redis_server::RedisServer;
use viewpipe_tests::tcp_switch::TcpSwitch;
use viewpipe_tests::Stack;

use super::takeover::produce;

/// A field of a server's `INFO replication`.
async fn replication(server: &RedisServer, field: &str) -> String {
    let info = server.command("INFO replication").await.expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// How far a server's replication stream has gone.
async fn repl_offset(server: &RedisServer) -> i64 {
    replication(server, "master_repl_offset")
        .await
        .parse()
        .unwrap_or(-1)
}

/// Waits until `replica` is attached, has everything `primary` has, and holds the
/// partition's live mark with its data set stamp.
async fn caught_up(primary: &RedisServer, replica: &RedisServer) {
    let client = redis::Client::open(replica.url()).expect("replica url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("replica");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attached = replication(replica, "master_link_status").await == "up";
        let (theirs, ours) = (repl_offset(primary).await, repl_offset(replica).await);
        let metas: Vec<String> = redis::cmd("KEYS")
            .arg("*:m")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut marked = false;
        if let [meta] = metas.as_slice() {
            let (live, stamp): (Option<i64>, Option<String>) = redis::cmd("HMGET")
                .arg(meta)
                .arg("live")
                .arg("replid")
                .query_async(&mut conn)
                .await
                .expect("HMGET");
            marked = live.is_some() && stamp.is_some();
        }
        if attached && ours >= theirs && marked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up (attached {attached}, offset {ours} of {theirs}, marked {marked})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The replica follows the primary until every view of the first batch is counted,
/// then is promoted (so it lags from there on) while the primary takes the second
/// batch, which the first ingest reads. Then the address moves to the replica, with
/// the aggregator stopped so it cannot notice yet. The second ingest, which never
/// read the key and so has no memory of the newer count, must not answer the
/// replica's older count, and neither may the first: the live mark names the data
/// set it was written on, and the promotion started a new one. Once the aggregator
/// goes on, it rewrites Redis from memory and both read every view.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_replica_promoted_never_sends_reads_back_in_another_ingest() {
    const BEFORE: i64 = 10_000;
    const TOTAL: i64 = 15_000;
    let stack = Stack::with_partitions(1).await.expect("stack");
    let primary = RedisServer::start(&[]).await.expect("primary");
    let port = primary.addr.port().to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port])
        .await
        .expect("replica");
    let switch = TcpSwitch::start(primary.addr).await.expect("switch");
    let url = format!("redis://{}", switch.addr);
    let env = [("REDIS_URL", url.as_str()), ("FLUSH_INTERVAL_MS", "60000")];

    produce(&stack, BEFORE).await;
    let mut aggregator = stack
        .spawn_aggregator_process(&env)
        .await
        .expect("aggregator");
    let first = stack
        .spawn_ingest_process(&env)
        .await
        .expect("first ingest");
    let second = stack
        .spawn_ingest_process(&env)
        .await
        .expect("second ingest");
    first.wait_count("resource", "hot", BEFORE).await;
    caught_up(&primary, &replica).await;
    assert_eq!(
        replica.command("REPLICAOF NO ONE").await.expect("promote"),
        "OK"
    );

    produce(&stack, TOTAL - BEFORE).await;
    first.wait_count("resource", "hot", TOTAL).await;
    aggregator.freeze().expect("SIGSTOP");
    switch.switch(replica.addr);

    let (mut answered, mut unavailable) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        for ingest in [&second, &first] {
            match ingest.try_count("resource", "hot").await {
                Ok(n) => {
                    answered += 1;
                    assert_eq!(n, TOTAL, "a read went back from {TOTAL} views to {n}");
                }
                Err(e) if e.starts_with("503") => unavailable += 1,
                Err(e) => panic!("a read failed otherwise than with 503: {e}"),
            }
        }
    }
    aggregator.thaw().expect("SIGCONT");
    second.wait_count("resource", "hot", TOTAL).await;
    first.wait_count("resource", "hot", TOTAL).await;
    println!(
        "replica promoted {} views behind: {answered} reads answered {TOTAL}, {unavailable} answered 503 until the owner rewrote it; then both ingests read {TOTAL}",
        TOTAL - BEFORE
    );
    assert!(unavailable > 0, "the reads met the promoted replica");
    aggregator.kill9().await.expect("stop");
}

/// A Redis user that may not run `INFO` cannot tell a promoted replica from its
/// primary: both services refuse to start, naming the command and the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_user_without_info_is_refused_at_start_up() {
    let stack = Stack::start().await.expect("stack");
    let redis = RedisServer::start(&[]).await.expect("redis-server");
    let said = redis
        .command("ACL SETUSER counter on >secret ~* &* +@all -info")
        .await
        .expect("ACL SETUSER");
    assert_eq!(said, "OK");
    let url = format!("redis://counter:secret@{}", redis.addr);
    let env = [("REDIS_URL", url.as_str())];
    for (name, started) in [
        ("ingest", stack.spawn_ingest(&env).await),
        ("aggregator", stack.spawn_aggregator(&env).await),
    ] {
        let e = match started {
            Ok(_) => panic!("the {name} started with a user that may not run INFO"),
            Err(e) => format!("{e:#}"),
        };
        println!("{name}: {e}");
        assert!(e.contains("may not run INFO"), "{e}");
        assert!(e.contains("+info"), "{e}");
        assert!(
            !e.contains("secret"),
            "the password stays out of the error: {e}"
        );
    }
}
