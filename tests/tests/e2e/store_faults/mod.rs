//! Exactly-once when the stores misbehave in ways a killed process does not show:
//! COMMIT replies lost on the way back, Redis down for half a minute. Each test
//! starts the faulty part itself (a proxy in front of the shared Postgres, a private
//! `redis-server`) and never breaks the shared servers.

use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;

use viewpipe_tests::chaos::{self, Load};
use viewpipe_tests::faults::{aggregators, kill_randomly, Running, RECOVERY};
use viewpipe_tests::pg_server::PgServer;
use viewpipe_tests::pgproxy::{server_of, PgProxy};
use viewpipe_tests::redis_server::RedisServer;
use viewpipe_tests::Stack;

mod failover;
mod held;
mod stalls;
mod takeover;

/// The aggregators reach Postgres through a proxy that loses the reply of every third
/// COMMIT: the transaction is in, the aggregator sees a broken connection and sends
/// the flush again. Meanwhile aggregators are killed with -9. Every view counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_replies_lost_through_kill_9s_count_exactly() {
    let stack = Stack::start().await.expect("stack");
    let proxy = PgProxy::start(server_of(&stack.db_url), 3)
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
    // The proxy loses every third COMMIT reply; how many COMMITs a run makes depends
    // on the machine's speed (8 to 30 seen), so a couple lost is the floor.
    assert!(lost >= 2, "the proxy lost only {lost} of {commits} replies");
}

/// A private Redis is stopped (its keys lost) for 30 s while views keep coming:
/// the aggregators go on flushing to Postgres from memory, stay in the group, and
/// rewrite Redis when it is back. Every view counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_for_thirty_seconds_keeps_flushing_and_counts_exactly() {
    let stack = Stack::start().await.expect("stack");
    let mut redis = RedisServer::start(&[]).await.expect("redis-server");
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let aggs = aggregators(&stack, 2, &env).await;
    let ingest = stack.spawn_ingest(&env).await.expect("ingest");
    let load = Load {
        events: 16_000,
        keys: 200,
        days: 3,
        rate: 400.0,
        concurrency: 32,
    };
    let run = Running::begin(&stack, &ingest, load);
    run.progress.reached(load.events / 5).await;
    let rebalances = chaos::metric_sum(&aggs, "viewpipe_aggregator_rebalances_total").await;
    run.progress
        .recovery_window(Duration::from_secs(30) + RECOVERY);
    redis.stop().await.expect("stop redis");
    let down = Instant::now();
    let acked_then = run.progress.acked();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let early = stack.flushed_total().await.expect("flushed total");
    tokio::time::sleep(Duration::from_secs(25)).await;
    let late = stack.flushed_total().await.expect("flushed total");
    let acked_down = run.progress.acked() - acked_then;
    redis.resume().await.expect("start redis again");
    let seconds_down = down.elapsed().as_secs_f64();
    assert!(
        late > early,
        "Postgres kept receiving flushes while Redis was down: {early} then {late}"
    );
    run.end(&stack, &ingest, "Redis down for 30 s").await;
    let after = chaos::metric_sum(&aggs, "viewpipe_aggregator_rebalances_total").await;
    println!(
        "Redis down {seconds_down:.1} s (keys lost): {acked_down} views acknowledged meanwhile; \
         Postgres total went {early} -> {late} during the outage; rebalances {rebalances} -> {after}"
    );
    assert_eq!(
        after, rebalances,
        "no aggregator left or was evicted from the group while Redis was down"
    );
}

/// Posts `ids` views of one key, each with its own `eventId` (`e0`, `e1`, ..).
async fn post_ids(ingest: &viewpipe_tests::Service, ids: std::ops::Range<usize>) {
    let http = reqwest::Client::new();
    for i in ids {
        let body = serde_json::json!({"contentId": "dup", "contentType": "resource",
                                      "eventId": format!("e{i}")});
        let status = http
            .post(ingest.url("/api/views"))
            .json(&body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        assert_eq!(status, 202, "view e{i} acknowledged");
    }
}

/// Waits for Postgres to hold `n` views, then checks that it stays there.
async fn settles_at(stack: &Stack, n: i64) {
    stack
        .wait_flushed_total(n, Duration::from_secs(60))
        .await
        .expect("flushed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.flushed_total().await.expect("flushed total"),
        n,
        "no duplicate counted late"
    );
}

/// Guarantee 3 across a Redis loss and without Redis: 100 ids posted, Redis loses
/// every key (or there is none), the same 100 posted again with 50 new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_ids_count_once_across_a_redis_loss_and_in_database_only_mode() {
    // Across a Redis restart that loses every key.
    let stack = Stack::start().await.expect("stack");
    let mut redis = RedisServer::start(&[]).await.expect("redis-server");
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str()), ("FLUSH_INTERVAL_MS", "200")];
    let _agg = stack.spawn_aggregator(&env).await.expect("aggregator");
    let ingest = stack.spawn_ingest(&env).await.expect("ingest");
    post_ids(&ingest, 0..100).await;
    settles_at(&stack, 100).await;
    redis.stop().await.expect("stop");
    redis.resume().await.expect("start again");
    post_ids(&ingest, 0..150).await;
    settles_at(&stack, 150).await;
    println!("eventIds across a Redis loss: 250 posted, 150 distinct, 150 counted");

    // Database-only mode.
    let stack = Stack::start().await.expect("stack");
    let env = [("REDIS_URL", "none"), ("FLUSH_INTERVAL_MS", "200")];
    let _agg = stack.spawn_aggregator(&env).await.expect("aggregator");
    let ingest = stack.spawn_ingest(&env).await.expect("ingest");
    post_ids(&ingest, 0..100).await;
    post_ids(&ingest, 0..150).await;
    settles_at(&stack, 150).await;
    println!("eventIds in database-only mode: 250 posted, 150 distinct, 150 counted");
}

/// The counter, partition and id tables, as a backup would hold them.
const RESTORED_TABLES: [&str; 4] = [
    "view_counter_total",
    "view_counter_daily",
    "aggregator_partitions",
    "view_event_ids",
];

/// Runs `restore` (one transaction) on a connection of its own, again if Postgres
/// broke a deadlock with a flush by aborting it: TRUNCATE locks its tables one by
/// one while a flush holds some of them, as a real restore beside running writers
/// could meet. Returns how many attempts it took.
async fn restore_retrying_deadlocks(db_url: &str, restore: &str) -> usize {
    for attempt in 1..=5 {
        // A connection of its own, dropped after each try: a failed multi-statement
        // transaction must not go back to a shared pool still aborted.
        let options = sea_orm::ConnectOptions::new(db_url)
            .max_connections(1)
            .to_owned();
        let db = sea_orm::Database::connect(options).await.expect("connect");
        match db.execute_unprepared(restore).await {
            Ok(_) => return attempt,
            Err(e) if e.to_string().contains("deadlock detected") => {
                println!("restore attempt {attempt} lost a deadlock to a flush; again");
            }
            Err(e) => panic!("restore: {e}"),
        }
        let _ = db.close().await;
    }
    panic!("restore lost 5 deadlocks in a row")
}

/// Postgres is restored to an earlier backup under running aggregators: they notice
/// (the flushes Postgres lost), hold the partitions and say so on `/readyz`; after
/// the documented recovery (`aggregator reset-pending --yes`) they count everything
/// past the restored positions again from the log, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restored_to_an_earlier_backup_is_reported_and_recovered_exactly() {
    let stack = Stack::start().await.expect("stack");
    let aggs = aggregators(&stack, 2, &[]).await;
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let load = Load {
        events: 10_000,
        keys: 200,
        days: 3,
        rate: 500.0,
        concurrency: 32,
    };
    let run = Running::begin(&stack, &ingest, load);

    // A consistent backup of the tables at 30%.
    run.progress.reached(load.events * 3 / 10).await;
    let mut backup = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ;");
    for t in RESTORED_TABLES {
        backup.push_str(&format!("CREATE TABLE backup_{t} AS SELECT * FROM {t};"));
    }
    backup.push_str("COMMIT;");
    stack.db.execute_unprepared(&backup).await.expect("backup");
    let backed_up = stack.flushed_total().await.expect("flushed total");

    // Restored at 60%, as a point-in-time restore or a lagging replica would be.
    run.progress.reached(load.events * 6 / 10).await;
    let before_restore = stack.flushed_total().await.expect("flushed total");
    let mut restore = String::from("BEGIN;");
    restore.push_str(&format!("TRUNCATE {};", RESTORED_TABLES.join(", ")));
    for t in RESTORED_TABLES {
        restore.push_str(&format!("INSERT INTO {t} SELECT * FROM backup_{t};"));
    }
    restore.push_str("COMMIT;");
    // Reads may fail from here until the partitions are claimed again after the
    // operator's reset.
    run.progress.recovery_window(Duration::from_secs(60));
    let attempts = restore_retrying_deadlocks(&stack.db_url, &restore).await;

    // Both aggregators notice on their next flush and report it.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reported = Vec::new();
    while reported.len() < aggs.len() && Instant::now() < deadline {
        reported.clear();
        for agg in &aggs {
            let answer = http.get(agg.url("/readyz")).send().await;
            if let Ok(answer) = answer {
                let status = answer.status().as_u16();
                let body = answer.text().await.unwrap_or_default();
                if status == 503 && body.contains("postgres_behind") {
                    reported.push(body);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        reported.len(),
        aggs.len(),
        "every aggregator reports Postgres behind on /readyz: {reported:?}"
    );
    // Every partition is held, not only those that flushed since the restore: one
    // left running could write Redis after the reset below and put it ahead again.
    let held = chaos::metric_sum(&aggs, "viewpipe_aggregator_held_partitions").await;
    assert_eq!(
        held,
        f64::from(viewpipe_tests::PARTITIONS),
        "held partitions reported: {held}"
    );

    // The documented recovery.
    let reset = tokio::process::Command::new(viewpipe_tests::bin("aggregator"))
        .arg("reset-pending")
        .arg("--yes")
        .env("REDIS_URL", viewpipe_tests::redis_url())
        .env("REDIS_PREFIX", &stack.redis_prefix)
        .env("CONSUMER_GROUP", &stack.group)
        .output()
        .await
        .expect("aggregator reset-pending");
    let said = String::from_utf8_lossy(&reset.stdout).into_owned();
    assert!(reset.status.success(), "reset-pending: {said} {:?}", reset);
    run.end_after_rollback(&stack, &ingest, "Postgres restored to a backup")
        .await;
    let ready_again = http
        .get(aggs[0].url("/readyz"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    println!(
        "Postgres restored from {before_restore} to {backed_up} flushed views (restore attempts: {attempts}); \
         {held} partitions held; reset-pending: {}; /readyz afterwards {ready_again}",
        said.trim()
    );
    assert_eq!(
        ready_again, 200,
        "ready again once the partitions are claimed"
    );
}
