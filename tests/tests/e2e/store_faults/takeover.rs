//! Take-overs after the owner died with its views counted in Redis and not flushed:
//! Redis takes no writes when the next owner claims, or has lost everything.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};

use viewpipe_tests::redis_server::RedisServer;
use viewpipe_tests::{Service, Stack};

/// Views of one key, all on partition 0.
const VIEWS: i64 = 150_000;

/// Produces `views` views of `resource:hot` and waits for every acknowledgement.
pub(super) async fn produce(stack: &Stack, views: i64) {
    let producer: FutureProducer = viewpipe_runtime::kafka::producer_config(&stack.kafka())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let payload = format!(
        r#"{{"v":1,"contentType":"resource","contentId":"hot","occurredAt":"{}"}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    let mut pending = Vec::with_capacity(views as usize);
    for _ in 0..views {
        let record = FutureRecord::to("views")
            .key("resource:hot")
            .payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
    for d in pending {
        d.await.expect("delivery").expect("acknowledged");
    }
}

/// Produces `views` views of one key; a first aggregator (Redis at `url`, no flush
/// for a minute) counts them all into Redis, an ingest reads them, and the
/// aggregator is killed with -9. Returns the ingest.
async fn first_owner_dies(stack: &Stack, url: &str, views: i64) -> Service {
    produce(stack, views).await;
    let first = stack
        .spawn_aggregator_process(&[("REDIS_URL", url), ("FLUSH_INTERVAL_MS", "60000")])
        .await
        .expect("first aggregator");
    let ingest = stack
        .spawn_ingest(&[("REDIS_URL", url)])
        .await
        .expect("ingest");
    ingest.wait_count("resource", "hot", views).await;
    assert_eq!(
        stack.flushed_total().await.expect("total"),
        0,
        "nothing flushed yet"
    );
    first.kill9().await.expect("kill -9");
    ingest
}

/// The first owner counts every view into Redis (its flush is a minute away) and is
/// killed with -9; Redis then takes no writes for 60 s, so the next owner's fence
/// gets no answer. That owner consumes the whole log meanwhile and would flush it in
/// parts every 100 ms: each part would retire the dead owner's longer generation, and
/// reads would fall from every view to the part flushed. It flushes nothing until the
/// fence answers, so reads never go back (they may answer 503 while Redis is
/// paused), and end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_whose_fence_gets_no_answer_never_sends_reads_back() {
    let stack = Stack::with_partitions(1).await.expect("stack");
    let redis = RedisServer::start(&[]).await.expect("redis-server");
    let url = redis.url();
    let ingest = first_owner_dies(&stack, &url, VIEWS).await;

    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let paused: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(60_000)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    assert_eq!(paused, "OK");
    let started = Instant::now();
    let second = stack
        .spawn_aggregator_process(&[("REDIS_URL", url.as_str()), ("FLUSH_INTERVAL_MS", "100")])
        .await
        .expect("second aggregator");

    let (mut reads, mut unavailable, mut lowest) = (0, 0, VIEWS);
    let mut flushed_while_paused = 0;
    while started.elapsed() < Duration::from_secs(58) {
        match ingest.try_count("resource", "hot").await {
            Ok(n) => {
                reads += 1;
                assert!(n <= VIEWS, "a read of {n}: more than the {VIEWS} views");
                lowest = lowest.min(n);
            }
            Err(_) => unavailable += 1,
        }
        flushed_while_paused = stack.flushed_total().await.expect("total");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "fence unanswered for 60 s: {reads} reads (lowest {lowest}), {unavailable} answered 503; {flushed_while_paused} views flushed meanwhile"
    );
    assert_eq!(
        lowest, VIEWS,
        "a read went back from {VIEWS} views to {lowest}"
    );
    stack
        .wait_flushed_total(VIEWS, Duration::from_secs(60))
        .await
        .expect("every view flushed once Redis takes writes");
    ingest.wait_count("resource", "hot", VIEWS).await;
    second.kill9().await.expect("stop");
}

/// The owner dies with its views counted in Redis only, and Redis then loses
/// everything (`FLUSHALL`): the next owner finds no live mark and no fence. What
/// readers saw is gone from Redis and not in Postgres, so the new owner recounts the
/// log up to its end before it marks the partition live; reads wait (503) meanwhile,
/// and never answer fewer views than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_after_redis_lost_a_dead_owners_views_never_sends_reads_back() {
    const SEEN: i64 = 30_000;
    let stack = Stack::with_partitions(1).await.expect("stack");
    let redis = RedisServer::start(&[]).await.expect("redis-server");
    let url = redis.url();
    let ingest = first_owner_dies(&stack, &url, SEEN).await;
    redis.flush_all().await.expect("FLUSHALL");
    let second = stack
        .spawn_aggregator_process(&[("REDIS_URL", url.as_str()), ("FLUSH_INTERVAL_MS", "100")])
        .await
        .expect("second aggregator");

    let started = Instant::now();
    let (mut reads, mut unavailable, mut lowest) = (0, 0, SEEN);
    while started.elapsed() < Duration::from_secs(15) {
        match ingest.try_count("resource", "hot").await {
            Ok(n) => {
                reads += 1;
                assert!(n <= SEEN, "a read of {n}: more than the {SEEN} views");
                lowest = lowest.min(n);
            }
            Err(_) => unavailable += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "Redis wiped after the owner's kill -9: {reads} reads (lowest {lowest}), {unavailable} answered 503 in 15 s"
    );
    assert_eq!(
        lowest, SEEN,
        "a read went back from {SEEN} views to {lowest}"
    );
    assert!(reads > 0, "no read answered within 15 s of the take-over");
    stack
        .wait_flushed_total(SEEN, Duration::from_secs(60))
        .await
        .expect("every view flushed");
    ingest.wait_count("resource", "hot", SEEN).await;
    second.kill9().await.expect("stop");
}
