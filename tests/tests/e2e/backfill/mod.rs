//! `ingest publish` and `aggregator backfill` end to end: real processes, a real
//! Postgres, the dev broker, and live traffic beside the backfill.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::json;

use viewpipe_tests::Stack;

mod publish;

const MONTHS: [&str; 3] = ["2025-01", "2025-02", "2025-03"];
const KEYS: usize = 500;
const EVENTS: usize = 50_000;
/// Lines that repeat an earlier line's `eventId` (and key): counted once.
const REPEATS: usize = 200;

/// (key, day) -> views
type Daily = BTreeMap<(String, NaiveDate), i64>;

/// The replay file and the daily counts it must produce.
fn history(path: &std::path::Path) -> Daily {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("file"));
    let mut expected = Daily::new();
    let mut lines = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let key = format!("k{}", (i * 7919) % KEYS);
        let month = MONTHS[i % 3];
        let day = 1 + (i / 3) % 28;
        let at = format!("{month}-{day:02}T{:02}:15:00Z", i % 24);
        let mut view = json!({"contentType": "resource", "contentId": key, "occurredAt": at});
        if i % 10 == 0 {
            view["eventId"] = json!(format!("e{i}"));
        }
        let date =
            NaiveDate::parse_from_str(&format!("{month}-{day:02}"), "%Y-%m-%d").expect("date");
        *expected
            .entry((format!("resource:{key}"), date))
            .or_default() += 1;
        lines.push(view.to_string());
    }
    for line in &lines {
        writeln!(file, "{line}").expect("write");
    }
    // Repeats of lines with an eventId (every 10th line has one).
    for r in 0..REPEATS {
        writeln!(file, "{}", lines[(r * 10 * 23) % EVENTS / 10 * 10]).expect("write");
    }
    file.flush().expect("flush");
    expected
}

async fn months_daily(stack: &Stack) -> Daily {
    let rows = stack
        .rows(
            "SELECT key || '|' || day::text, count FROM view_counter_daily
             WHERE day >= '2025-01-01' AND day < '2025-04-01'",
        )
        .await
        .expect("daily rows");
    rows.into_iter()
        .map(|(kd, n)| {
            let (k, d) = kd.split_once('|').expect("key|day");
            ((k.to_owned(), d.parse().expect("day")), n)
        })
        .collect()
}

async fn post_views(http: &reqwest::Client, ingest: &str, id: &str, at: &str, n: usize) {
    for _ in 0..n {
        let r = http
            .post(format!("{ingest}/api/views"))
            .json(&json!({"contentType": "resource", "contentId": id, "occurredAt": at}))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "{}", r.status());
    }
}

fn jobs_outcomes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (month, rest) = l.split_once(": ")?;
            let outcome = rest.split(':').next()?;
            (MONTHS.contains(&month)).then(|| (month.to_owned(), outcome.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_rebuilds_months_exactly_beside_live_traffic_and_again_changes_nothing() {
    let stack = Stack::start().await.expect("stack");
    let aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let base = ingest.url("");
    let http = reqwest::Client::new();

    // Counted live before the backfill: a key the replay lacks, and one it has.
    post_views(&http, &base, "gone", "2025-02-10T10:00:00Z", 30).await;
    post_views(&http, &base, "k1", "2025-01-05T10:00:00Z", 20).await;
    let today = chrono::Utc::now().to_rfc3339();
    post_views(&http, &base, "gone", &today, 5).await;
    stack
        .wait_flushed_total(55, Duration::from_secs(30))
        .await
        .expect("live views flushed");

    let dir = std::env::temp_dir().join(format!("vp-backfill-{}", stack.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("history.ndjson");
    let expected = history(&file);
    let (code, out, err) = stack
        .command(
            "ingest",
            &[
                "publish",
                "--topic",
                "views.replay",
                file.to_str().expect("path"),
            ],
        )
        .await
        .expect("publish");
    assert_eq!(code, 0, "publish: {out}\n{err}");
    assert!(
        out.contains(&format!("published {} events", EVENTS + REPEATS)),
        "{out}"
    );
    println!("ingest publish: {}", out.lines().next().unwrap_or_default());

    // Live traffic to the current month all through the backfills.
    let live = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            let mut sent = 0i64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
            while tokio::time::Instant::now() < deadline {
                let at = chrono::Utc::now().to_rfc3339();
                post_views(&http, &base, &format!("live{}", sent % 20), &at, 1).await;
                sent += 1;
            }
            sent
        }
    });

    let backfill = ["backfill", "--from", "2025-01", "--to", "2025-03"];
    let (code, out, err) = stack
        .command("aggregator", &backfill)
        .await
        .expect("backfill");
    assert_eq!(code, 0, "backfill: {out}\n{err}");
    let outcomes = jobs_outcomes(&out);
    assert_eq!(outcomes.len(), 3, "{out}");
    assert!(outcomes.iter().all(|(_, o)| o == "rebuilt"), "{out}");
    println!("first backfill:\n{out}");
    assert_eq!(
        months_daily(&stack).await,
        expected,
        "daily rows are the replay's"
    );

    // Again: nothing changes.
    let (code, out, err) = stack.command("aggregator", &backfill).await.expect("again");
    assert_eq!(code, 0, "backfill again: {out}\n{err}");
    assert_eq!(
        months_daily(&stack).await,
        expected,
        "a second run changes nothing"
    );

    // Two overlapping runs at once: February is rebuilt by one of them only.
    let first = ["backfill", "--from", "2025-01", "--to", "2025-02"];
    let second = ["backfill", "--from", "2025-02", "--to", "2025-03"];
    let (a, b) = tokio::join!(
        stack.command("aggregator", &first),
        stack.command("aggregator", &second)
    );
    let (a, b) = (a.expect("first run"), b.expect("second run"));
    let mut february = Vec::new();
    for (code, out, err) in [&a, &b] {
        assert!(*code == 0 || *code == 2, "overlapping run: {out}\n{err}");
        february.extend(
            jobs_outcomes(out)
                .into_iter()
                .filter(|(m, _)| m == "2025-02"),
        );
    }
    let rebuilt = february.iter().filter(|(_, o)| o == "rebuilt").count();
    let skipped = february.iter().filter(|(_, o)| o == "skipped").count();
    assert_eq!((rebuilt, skipped), (1, 1), "{}\n{}", a.1, b.1);
    println!("overlapping runs:\n{}\n{}", a.1, b.1);
    assert_eq!(months_daily(&stack).await, expected);

    let sent = live.await.expect("live traffic");
    let live_expected: i64 = sent;
    // Totals: replay sums for the months (+ 5 live views of today for `gone`, the
    // live keys' views), and every total equals its daily sum.
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for ((key, _), n) in &expected {
        *totals.entry(key.clone()).or_default() += n;
    }
    let want_total: i64 = totals.values().sum::<i64>() + 5 + live_expected;
    stack
        .wait_flushed_total(want_total, Duration::from_secs(60))
        .await
        .expect("live traffic flushed too");
    let got = stack.totals().await.expect("totals");
    for (key, n) in &totals {
        assert_eq!(got.get(key), Some(n), "total of {key}");
    }
    assert_eq!(
        got.get("resource:gone"),
        Some(&5),
        "gone lowered by exactly its 30 month views"
    );
    let live_sum: i64 = got
        .iter()
        .filter(|(k, _)| k.starts_with("resource:live"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(live_sum, live_expected, "live months exact");
    let mismatched = stack
        .rows(
            "SELECT t.key, t.total - COALESCE(SUM(d.count), 0)::int8 FROM view_counter_total t
             LEFT JOIN view_counter_daily d ON d.key = t.key GROUP BY t.key, t.total
             HAVING t.total <> COALESCE(SUM(d.count), 0)",
        )
        .await
        .expect("invariant");
    assert!(mismatched.is_empty(), "total = sum(daily): {mismatched:?}");
    println!(
        "{live_expected} live views counted beside the backfills; {} keys rebuilt",
        totals.len()
    );
    drop((aggregator, ingest));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_topic_that_lost_its_start_is_refused_not_half_written() {
    let stack = Stack::with_partitions(1).await.expect("stack");
    let producer: rdkafka::producer::FutureProducer =
        viewpipe_runtime::kafka::producer_config(&stack.kafka())
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
    let low = || {
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", stack.broker.addr().to_string())
            .create()
            .expect("consumer");
        rdkafka::consumer::Consumer::fetch_watermarks(&c, "views.replay", 0, Duration::from_secs(5))
            .expect("watermarks")
            .0
    };
    // The dev broker keeps a few MiB per partition: fill it until its start moves.
    let mut rounds = 0;
    while low() == 0 {
        rounds += 1;
        assert!(rounds <= 40, "the dev broker kept everything");
        let mut pending = Vec::new();
        for i in 0..20_000 {
            let id = format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            );
            let payload = format!(
                r#"{{"v":1,"contentType":"resource","contentId":"{id}","occurredAt":"2025-01-{:02}T10:00:00Z"}}"#,
                1 + i % 28
            );
            let record = rdkafka::producer::FutureRecord::to("views.replay")
                .key("k")
                .payload(&payload);
            pending.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("queued"),
            );
        }
        for d in pending {
            d.await.expect("delivery").expect("acknowledged");
        }
    }
    let (code, out, err) = stack
        .command(
            "aggregator",
            &["backfill", "--from", "2025-01", "--to", "2025-01"],
        )
        .await
        .expect("backfill");
    assert_eq!(code, 1, "refused: {out}\n{err}");
    assert!(
        out.contains("2025-01: refused") && out.contains("partition 0 starts at offset"),
        "{out}"
    );
    let rows = stack
        .rows("SELECT key, count FROM view_counter_daily")
        .await
        .expect("rows");
    assert!(rows.is_empty(), "nothing written: {} rows", rows.len());
    println!(
        "replay starting at offset {}: {}",
        low(),
        out.lines()
            .find(|l| l.starts_with("2025-01"))
            .unwrap_or_default()
    );
}
