//! Redis out of memory and Postgres stalled then restarted: counting goes on and stays exact.

use super::*;

/// Redis at `maxmemory` with `noeviction` refuses writes: the aggregators count in
/// memory, keep flushing to Postgres and say so on `/readyz` (GETs answer 503 for
/// the partitions Redis cannot hold). Once the operator frees memory, Redis is
/// rewritten from memory and every view counts once, GETs included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_out_of_memory_keeps_counting_exactly() {
    let stack = Stack::start().await.expect("stack");
    let redis = RedisServer::start(&["--maxmemory-policy", "noeviction"])
        .await
        .expect("redis-server");
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let aggs = aggregators(&stack, 2, &env).await;
    let ingest = stack.spawn_ingest(&env).await.expect("ingest");
    // 2 MiB of keys of its own, then a limit below what Redis uses now: it is full.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let ballast = 2048;
    for i in 0..ballast {
        let _: () = redis::cmd("SET")
            .arg(format!("ballast:{i}"))
            .arg("x".repeat(1024))
            .query_async(&mut conn)
            .await
            .expect("ballast");
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("info");
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("used_memory");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - 200_000)
        .query_async(&mut conn)
        .await
        .expect("maxmemory");
    let load = Load {
        events: 6_000,
        keys: 200,
        days: 3,
        rate: 500.0,
        concurrency: 32,
    };
    let run = Running::begin(&stack, &ingest, load);
    // GETs of partitions Redis cannot hold answer 503 until memory is freed.
    run.progress.recovery_window(Duration::from_secs(120));
    run.progress.reached(load.events / 2).await;
    let http = reqwest::Client::new();
    let mut said = Vec::new();
    for agg in &aggs {
        let body = match http.get(agg.url("/readyz")).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        said.push(body);
    }
    assert!(
        said.iter().any(|b| b.contains("redis_behind")),
        "an aggregator says Redis does not take writes: {said:?}"
    );
    run.progress.reached(load.events).await;
    let flushed_while_full = stack.flushed_total().await.expect("flushed total");
    // The operator frees memory; the aggregators rewrite Redis from memory.
    for i in 0..ballast {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(format!("ballast:{i}"))
            .query_async(&mut conn)
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut behind = false;
        for agg in &aggs {
            if let Ok(answer) = http.get(agg.url("/readyz")).send().await {
                behind |= answer
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("redis_behind");
            }
        }
        if !behind || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.end(&stack, &ingest, "Redis at maxmemory (noeviction)")
        .await;
    println!(
        "Redis at maxmemory: {ballast} KiB of ballast; {flushed_while_full} of {} views in Postgres before memory was freed",
        load.events
    );
    assert!(
        flushed_while_full > 0,
        "Postgres kept receiving flushes while Redis was full"
    );
}

/// A private Postgres stalls for 20 s (every process stopped, connections left
/// open), then crashes and restarts, under running aggregators: they wait, time out,
/// reconnect and go on by themselves; every view counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stalled_for_twenty_seconds_then_restarted_counts_exactly() {
    let pg = PgServer::start().await.expect("private postgres");
    let stack = Stack::on_postgres(&pg.admin_url(), viewpipe_tests::PARTITIONS)
        .await
        .expect("stack");
    let aggs = aggregators(&stack, 2, &[]).await;
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let load = Load {
        events: 14_000,
        keys: 200,
        days: 3,
        rate: 350.0,
        concurrency: 32,
    };
    let run = Running::begin(&stack, &ingest, load);
    run.progress.reached(load.events / 5).await;
    run.progress
        .recovery_window(Duration::from_secs(20) + RECOVERY);
    let stalled = pg.stall(Duration::from_secs(20)).await.expect("stall");
    pg.wait_ready(Duration::from_secs(10)).await.expect("back");
    run.progress.reached(load.events * 7 / 10).await;
    let down = Instant::now();
    run.progress.recovery_window(RECOVERY);
    pg.crash().await.expect("crash");
    pg.resume().await.expect("restart");
    let restart_ms = down.elapsed().as_millis();
    run.end(
        &stack,
        &ingest,
        "Postgres stalled 20 s, then crashed and restarted",
    )
    .await;
    let rebalances = chaos::metric_sum(&aggs, "viewpipe_aggregator_rebalances_total").await;
    println!(
        "private Postgres: {stalled} processes stopped for 20 s; crashed and back in {restart_ms} ms; {rebalances} rebalances"
    );
}
