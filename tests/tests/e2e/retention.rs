//! Retention end to end: an aggregator pruning daily rows, finished jobs and visitor
//! salts while views keep arriving and being flushed; the backfill refusing months
//! whose daily rows were pruned; the mark and the pruners' lock under contention.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use serde_json::json;

use aggregator::settings::RetentionSettings;
use viewpipe_runtime::Shutdown;
use viewpipe_store::backfill::{self, Month, MonthLock};
use viewpipe_store::retention::{self, Batch, Raised, Table, Target};
use viewpipe_tests::openapi::Api;
use viewpipe_tests::Stack;

const TOKEN: &str = "t0ken-for-tests-long-enough-for-32";

/// (key, day) -> views
type Daily = BTreeMap<(String, NaiveDate), i64>;

fn days_ago(today: NaiveDate, n: i64) -> NaiveDate {
    today - chrono::Duration::days(n)
}

/// A moment of `day` the ingest accepts: noon, or a minute ago for today.
fn moment(day: NaiveDate, now: DateTime<Utc>) -> DateTime<Utc> {
    if day >= now.date_naive() {
        now - chrono::Duration::minutes(1)
    } else {
        day.and_time(NaiveTime::from_hms_opt(12, 0, 0).expect("noon"))
            .and_utc()
    }
}

/// Produces `views` (content id, moment) straight to `topic`, as the ingest would.
async fn produce(stack: &Stack, topic: &str, views: &[(String, DateTime<Utc>)]) {
    let producer: FutureProducer = viewpipe_runtime::kafka::producer_config(&stack.kafka())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(views.len());
    for (id, at) in views {
        let payload = json!({"v": 1, "contentType": "resource", "contentId": id,
                             "occurredAt": at.to_rfc3339()})
        .to_string();
        let key = format!("resource:{id}");
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("queued"),
        );
    }
    for d in deliveries {
        d.await.expect("delivery").expect("acknowledged");
    }
}

async fn daily_rows(stack: &Stack, table: &str, condition: &str) -> Daily {
    let column = if table == "view_counter_daily" {
        "count"
    } else {
        "visitors"
    };
    stack
        .rows(&format!(
            "SELECT key || '|' || day::text, {column} FROM {table} WHERE {condition}"
        ))
        .await
        .expect("daily rows")
        .into_iter()
        .map(|(kd, n)| {
            let (k, d) = kd.split_once('|').expect("key|day");
            ((k.to_owned(), d.parse().expect("day")), n)
        })
        .collect()
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack
        .rows(&format!("SELECT 'n', ({sql})::int8"))
        .await
        .expect("count")[0]
        .1
}

/// A metric's value in a Prometheus text page (the first series matching).
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The aggregator's own `/metrics` page.
async fn scrape(aggregator: &viewpipe_tests::Service) -> String {
    reqwest::get(aggregator.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

fn pruned_count(page: &str, table: Table) -> i64 {
    let series = format!(
        "viewpipe_aggregator_pruned_rows_total{{table=\"{}\"}}",
        table.name()
    );
    metric(page, &series).unwrap_or(-1.0) as i64
}

/// The flush-duration histogram of a `/metrics` page: flushes, seconds, and
/// flushes that took 1 s or more, and 2.5 s or more.
#[derive(Debug, Default)]
struct FlushStats {
    count: f64,
    sum: f64,
    over_1s: f64,
    over_2_5s: f64,
}

impl FlushStats {
    fn since(&self, earlier: &FlushStats) -> FlushStats {
        FlushStats {
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            over_1s: self.over_1s - earlier.over_1s,
            over_2_5s: self.over_2_5s - earlier.over_2_5s,
        }
    }
}

fn flush_stats(page: &str) -> FlushStats {
    let name = "viewpipe_aggregator_flush_duration_seconds";
    let count = metric(page, &format!("{name}_count")).unwrap_or(0.0);
    let within = |le: &str| {
        metric(page, &format!("{name}_bucket{{le=\"{le}\"}}"))
            .unwrap_or_else(|| panic!("the {le} s bucket"))
    };
    FlushStats {
        count,
        sum: metric(page, &format!("{name}_sum")).unwrap_or(0.0),
        over_1s: count - within("1"),
        over_2_5s: count - within("2.5"),
    }
}

/// Posts live views (every `workers`-th from `first`) until `until`; returns each
/// one's key and day.
async fn post_live(
    api: Api,
    url: String,
    first: usize,
    workers: usize,
    until: Instant,
    now: DateTime<Utc>,
) -> Vec<(String, NaiveDate)> {
    let mut sent = Vec::new();
    let mut i = first;
    while Instant::now() < until {
        let (id, at) = live_view(i, now.date_naive(), now);
        let r = api
            .post(&url)
            .json(&json!({"contentType": "resource", "contentId": id,
                          "occurredAt": at.to_rfc3339()}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 202);
        sent.push((format!("resource:{id}"), at.date_naive()));
        i += workers;
    }
    sent
}

/// Jobs of the ages and states an old deployment has, tagged: which must stay.
const JOBS: [(&str, &str, bool); 8] = [
    (
        "('flush', 'elsewhere', 'completed', '{\"tag\":\"flush-done-40d\"}', '{\"flushed\":3}', NULL, now() - interval '40 days', now() - interval '40 days')",
        "flush-done-40d",
        false,
    ),
    (
        "('flush', 'elsewhere', 'failed', '{\"tag\":\"flush-failed-31d\"}', NULL, 'partitions [1] were not flushed', now() - interval '31 days', now() - interval '31 days')",
        "flush-failed-31d",
        false,
    ),
    (
        "('flush', 'elsewhere', 'completed', '{\"tag\":\"flush-done-29d\"}', '{\"flushed\":1}', NULL, now() - interval '29 days', now() - interval '29 days')",
        "flush-done-29d",
        true,
    ),
    (
        "('flush', 'elsewhere', 'running', '{\"tag\":\"flush-running-90d\"}', '{\"flushed\":0}', NULL, now() - interval '90 days', NULL)",
        "flush-running-90d",
        true,
    ),
    (
        "('backfill', NULL, 'queued', '{\"tag\":\"backfill-queued-90d\",\"month\":\"2020-03\",\"topic\":\"views.replay\"}', NULL, NULL, now() - interval '90 days', NULL)",
        "backfill-queued-90d",
        true,
    ),
    (
        "('backfill', NULL, 'completed', '{\"tag\":\"rebuild-older-70d\",\"month\":\"2020-01\",\"topic\":\"views.replay\"}', '{\"outcome\":\"rebuilt\",\"firstOffsets\":{\"0\":0}}', NULL, now() - interval '71 days', now() - interval '70 days')",
        "rebuild-older-70d",
        false,
    ),
    (
        "('backfill', NULL, 'completed', '{\"tag\":\"rebuild-newest-60d\",\"month\":\"2020-01\",\"topic\":\"views.replay\"}', '{\"outcome\":\"rebuilt\",\"firstOffsets\":{\"0\":5}}', NULL, now() - interval '61 days', now() - interval '60 days')",
        "rebuild-newest-60d",
        true,
    ),
    (
        "('backfill', NULL, 'failed', '{\"tag\":\"backfill-refused-45d\",\"month\":\"2020-02\",\"topic\":\"views.replay\"}', '{\"outcome\":\"refused\"}', 'the replay was trimmed', now() - interval '45 days', now() - interval '45 days')",
        "backfill-refused-45d",
        false,
    ),
];

/// Days (ago) whose rows retention deletes, and days it keeps, at 15 days.
const PRUNED_AGES: [i64; 3] = [40, 30, 20];
const KEPT_AGES: [i64; 3] = [10, 3, 0];
const RETAIN_DAILY: i64 = 15;
const OLD_KEYS: usize = 3000;
const KEPT_KEYS: usize = 500;
/// How long live views arrive, and the bursts of late views meanwhile.
const TRAFFIC: Duration = Duration::from_secs(8);
const BURSTS: usize = 3;
const BURST_ROWS: usize = 8000;

/// The live view `i`: a late view of a pruned day (every 10th), a view of a kept
/// day of an old key, or a view of now.
fn live_view(i: usize, today: NaiveDate, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
    match i % 10 {
        0 => (
            format!("old{}", i % OLD_KEYS),
            moment(days_ago(today, 40), now),
        ),
        1..=4 => (
            format!("old{}", i % KEPT_KEYS),
            moment(days_ago(today, 3), now),
        ),
        _ => (
            format!("live{}", i % 20),
            now - chrono::Duration::seconds(1),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_beside_live_flushes_keeps_totals_and_recent_days_exact() {
    let stack = Stack::start().await.expect("stack");
    let now = Utc::now();
    let today = now.date_naive();
    let cutoff = days_ago(today, RETAIN_DAILY);

    // History through the pipeline, counted by an aggregator that prunes nothing.
    let mut history = Vec::new();
    for i in 0..OLD_KEYS {
        for age in PRUNED_AGES {
            history.push((format!("old{i}"), moment(days_ago(today, age), now)));
        }
    }
    for i in 0..KEPT_KEYS {
        for age in KEPT_AGES {
            history.push((format!("old{i}"), moment(days_ago(today, age), now)));
        }
    }
    let first = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200"), ("RETAIN_JOBS_DAYS", "0")])
        .await
        .expect("aggregator");
    produce(&stack, "views", &history).await;
    stack
        .wait_flushed_total(history.len() as i64, Duration::from_secs(90))
        .await
        .expect("history flushed");
    first.stop(Duration::from_secs(20)).await.expect("stopped");

    // What no flush in this tree writes yet: visitor sketches (stand-in bytes),
    // salts, and jobs of every state and age.
    stack
        .db
        .execute_unprepared(&format!(
            "INSERT INTO view_visitors_daily (key, day, visitors, sketch)
             SELECT 'resource:old' || i, DATE '{today}' - a, 1 + i % 7, decode('00ff', 'hex')
             FROM generate_series(0, {}) i, unnest(ARRAY[40, 30, 20, 10, 3, 0]) a;
             INSERT INTO visitor_salts (day, salt)
             SELECT DATE '{today}' - a, decode(md5(a::text), 'hex')
             FROM unnest(ARRAY[5, 2, 1, 0, -1]) a;
             INSERT INTO jobs (kind, consumer_group, status, params, result, error,
                               created_at, finished_at) VALUES {}",
            OLD_KEYS - 1,
            JOBS.map(|(row, _, _)| row).join(", ")
        ))
        .await
        .expect("seed");
    let visitors_kept_before =
        daily_rows(&stack, "view_visitors_daily", &format!("day >= '{cutoff}'")).await;
    let totals_before = stack.totals().await.expect("totals");
    let kept_before = daily_rows(&stack, "view_counter_daily", &format!("day >= '{cutoff}'")).await;
    let pruned_before_rows = count(
        &stack,
        &format!("SELECT count(*) FROM view_counter_daily WHERE day < '{cutoff}'"),
    )
    .await;
    assert_eq!(pruned_before_rows, (OLD_KEYS * PRUNED_AGES.len()) as i64);
    let gone_job: String = stack
        .rows("SELECT id::text, 0::int8 FROM jobs WHERE params->>'tag' = 'flush-done-40d'")
        .await
        .expect("job id")[0]
        .0
        .clone();

    // The pruning aggregator, with views arriving all the while.
    let aggregator = stack
        .spawn_aggregator_process(&[
            ("FLUSH_INTERVAL_MS", "200"),
            ("RETAIN_DAILY_DAYS", &RETAIN_DAILY.to_string()),
            ("RETAIN_JOBS_DAYS", "30"),
            ("RETENTION_INTERVAL", "300ms"),
        ])
        .await
        .expect("pruning aggregator");
    let ingest = stack
        .spawn_ingest(&[("ADMIN_TOKEN", TOKEN)])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    // One view through, so that the aggregator holds its partitions before the
    // traffic starts (the first run has pruned the history's old days by then).
    let probe = live_view(1, today, now);
    let r = api
        .post(ingest.url("/api/views"))
        .json(&json!({"contentType": "resource", "contentId": probe.0,
                      "occurredAt": probe.1.to_rfc3339()}))
        .send()
        .await
        .expect("probe");
    assert_eq!(r.status().as_u16(), 202);
    let probe_sum = totals_before.values().sum::<i64>() + 1;
    stack
        .wait_flushed_total(probe_sum, Duration::from_secs(60))
        .await
        .expect("the probe flushed");
    let page = scrape(&aggregator).await;
    let pruned_daily_at_start = pruned_count(&page, Table::CounterDaily);
    let flushes_at_start = flush_stats(&page);

    // Live views over HTTP for TRAFFIC, and meanwhile bursts of late views straight to
    // the topic: each writes BURST_ROWS daily rows of pruned days, which the flushes
    // write and the pruner deletes in batches while the live views go on.
    let until = Instant::now() + TRAFFIC;
    let posters: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(post_live(
                api.clone(),
                ingest.url("/api/views"),
                w,
                4,
                until,
                now,
            ))
        })
        .collect();
    let mut bursts = Vec::new();
    for b in 0..BURSTS {
        tokio::time::sleep(TRAFFIC / (BURSTS as u32 + 1)).await;
        let burst: Vec<_> = (0..BURST_ROWS)
            .map(|n| {
                let key = format!("burst{b}-{}", n / 10);
                (key, moment(days_ago(today, 21 + (n % 10) as i64), now))
            })
            .collect();
        produce(&stack, "views", &burst).await;
        bursts.extend(burst);
    }
    let mut sent: Vec<(String, NaiveDate)> = Vec::new();
    for p in posters {
        sent.extend(p.await.expect("poster"));
    }
    let posted = sent.len();
    sent.push((format!("resource:{}", probe.0), probe.1.date_naive()));
    sent.extend(
        bursts
            .iter()
            .map(|(id, at)| (format!("resource:{id}"), at.date_naive())),
    );
    let late = sent.iter().filter(|(_, d)| *d < cutoff).count();

    let mut totals_want = totals_before.clone();
    let mut kept_want = kept_before.clone();
    for (key, day) in &sent {
        *totals_want.entry(key.clone()).or_default() += 1;
        if *day >= cutoff {
            *kept_want.entry((key.clone(), *day)).or_default() += 1;
        }
    }
    let want_sum: i64 = totals_want.values().sum();
    stack
        .wait_flushed_total(want_sum, Duration::from_secs(60))
        .await
        .expect("live views flushed");
    // Late views recreate rows of pruned days; the next run deletes them again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pruned_sql = |table: &str| format!("SELECT count(*) FROM {table} WHERE day < '{cutoff}'");
    while count(&stack, &pruned_sql("view_counter_daily")).await > 0 {
        assert!(Instant::now() < deadline, "daily rows before {cutoff} stay");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Totals keep every view; kept days are exact; pruned days are gone.
    assert_eq!(stack.totals().await.expect("totals"), totals_want);
    assert_eq!(
        daily_rows(&stack, "view_counter_daily", "true").await,
        kept_want,
        "daily rows from {cutoff} on are exactly the views of those days"
    );
    assert_eq!(count(&stack, &pruned_sql("view_visitors_daily")).await, 0);
    assert_eq!(
        daily_rows(&stack, "view_visitors_daily", "true").await,
        visitors_kept_before,
        "visitor rows of kept days intact"
    );
    let mark = retention::pruned_before(&stack.db).await.expect("mark");
    assert_eq!(mark, Some(cutoff), "the mark names the cutoff");
    let salts = stack
        .rows("SELECT day::text, 0::int8 FROM visitor_salts ORDER BY day")
        .await
        .expect("salts");
    let salts: Vec<String> = salts.into_iter().map(|(d, _)| d).collect();
    let want_salts: Vec<String> = [1, 0, -1]
        .iter()
        .map(|a| days_ago(today, *a).to_string())
        .collect();
    assert_eq!(salts, want_salts, "salts of yesterday on only");
    let jobs = stack
        .rows("SELECT params->>'tag', 0::int8 FROM jobs WHERE params ? 'tag' ORDER BY 1")
        .await
        .expect("jobs");
    let mut kept_jobs: Vec<&str> = JOBS
        .iter()
        .filter(|(_, _, kept)| *kept)
        .map(|(_, tag, _)| *tag)
        .collect();
    kept_jobs.sort_unstable();
    let left: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        left, kept_jobs,
        "old finished jobs gone, open ones and the month's newest rebuild kept"
    );

    // Over HTTP: the pruned job is gone, a key's count is its total.
    let job = api
        .get(ingest.url(&format!("/api/jobs/{gone_job}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("job");
    assert_eq!(
        job.status().as_u16(),
        404,
        "a pruned job is no longer found"
    );
    let got: serde_json::Value = api
        .get(ingest.url("/api/views?contentType=resource&contentId=old7"))
        .send()
        .await
        .expect("count")
        .json()
        .await
        .expect("json");
    assert_eq!(
        got["count"].as_i64(),
        totals_want.get("resource:old7").copied(),
        "GET answers the total"
    );

    // The aggregator's own metrics and log.
    let page = scrape(&aggregator).await;
    let pruned = |table: Table| pruned_count(&page, table);
    let pruned_daily = pruned(Table::CounterDaily);
    assert!(pruned_daily >= pruned_before_rows, "{pruned_daily}");
    assert_eq!(
        pruned(Table::VisitorsDaily),
        (OLD_KEYS * PRUNED_AGES.len()) as i64
    );
    assert_eq!(pruned(Table::Jobs), 4);
    assert_eq!(pruned(Table::VisitorSalts), 2);
    let during = flush_stats(&page).since(&flushes_at_start);
    let pruned_during = pruned_daily - pruned_daily_at_start;
    assert!(
        pruned_during >= (BURSTS * BURST_ROWS) as i64,
        "the bursts' rows were pruned during the traffic: {pruned_during}"
    );
    assert!(during.count >= 10.0, "flushes went on: {during:?}");
    // The default flush interval is 5 s; a debug build on a shared machine needs
    // some room below that.
    assert_eq!(
        during.over_2_5s, 0.0,
        "no flush took 2.5 s or more beside the pruning: {during:?}"
    );
    let mean_ms = during.sum / during.count * 1000.0;

    // A month retention pruned is refused by the backfill, and nothing moves.
    let month = Month::of(days_ago(today, 40));
    let m = month.to_string();
    let (code, out, err) = stack
        .command("aggregator", &["backfill", "--from", &m, "--to", &m])
        .await
        .expect("backfill");
    assert_eq!(code, 1, "{out}\n{err}");
    let refusal = out
        .lines()
        .find(|l| l.starts_with(&format!("{m}: refused: daily rows before {cutoff}")))
        .unwrap_or_else(|| panic!("{m} refused for retention: {out}"))
        .to_owned();
    assert_eq!(stack.totals().await.expect("totals"), totals_want);

    // Shutdown is prompt while pruning runs every 300 ms.
    let log_path = aggregator.log_path.clone();
    let stopping = Instant::now();
    let status = aggregator
        .terminate(Duration::from_secs(20))
        .await
        .expect("stopped");
    let stop_ms = stopping.elapsed().as_millis();
    assert!(status.success(), "{status}");
    assert!(stop_ms < 10_000, "stopped in {stop_ms} ms");
    let log = std::fs::read_to_string(&log_path).expect("log");
    let runs = log.lines().filter(|l| l.contains("retention run")).count();
    let first_run = log
        .lines()
        .find(|l| l.contains("retention run") && !l.contains("view_counter_daily=0"))
        .expect("a run that deleted daily rows")
        .to_owned();
    assert!(
        first_run.contains("view_visitors_daily=9000"),
        "{first_run}"
    );
    assert!(runs >= 5, "{runs} runs logged");

    eprintln!(
        "retention: {} history views; then for {TRAFFIC:?} {posted} live views over HTTP ({late} views of pruned days in all, {} in {BURSTS} bursts) while pruning every 300 ms: {pruned_during} daily rows pruned meanwhile, {pruned_daily} in all (history: {pruned_before_rows} before cutoff {cutoff}), {} visitor rows, 4 of 8 jobs, 2 of 5 salts; {} totals exact (sum {want_sum}), {} kept daily rows exact; {} flushes meanwhile, mean {mean_ms:.1} ms, {} of them >= 1 s; {runs} runs logged; stopped in {stop_ms} ms; backfill: {}",
        history.len(),
        bursts.len(),
        pruned(Table::VisitorsDaily),
        totals_want.len(),
        kept_want.len(),
        during.count,
        during.over_1s,
        refusal.split(" (RETAIN").next().unwrap_or_default(),
    );
    eprintln!("retention: first run logged: {}", first_run.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_refuses_months_retention_pruned_and_rebuilds_the_rest() {
    let stack = Stack::start().await.expect("stack");
    let at = |d: &str| -> DateTime<Utc> { format!("{d}T10:00:00Z").parse().expect("moment") };
    let views = |spec: &[(&str, &str, usize)]| -> Vec<(String, DateTime<Utc>)> {
        spec.iter()
            .flat_map(|(id, day, n)| std::iter::repeat_n((id.to_string(), at(day)), *n))
            .collect()
    };
    // Live counts of three months, flushed.
    let aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let live = views(&[
        ("k1", "2025-01-20", 7),
        ("k1", "2025-02-20", 5),
        ("k1", "2025-03-10", 3),
        ("k2", "2025-03-12", 2),
    ]);
    produce(&stack, "views", &live).await;
    stack
        .wait_flushed_total(17, Duration::from_secs(60))
        .await
        .expect("flushed");
    aggregator
        .stop(Duration::from_secs(20))
        .await
        .expect("stopped");

    // Retention as of 2025-03-01 with 14 days: rows before 2025-02-15 go.
    let settings = RetentionSettings {
        retain_daily_days: 14,
        retain_jobs_days: 0,
        retention_interval: Duration::from_secs(3600),
    };
    let as_of = at("2025-03-01");
    let run = aggregator::retention::prune(&stack.db, &settings, as_of, &Shutdown::default())
        .await
        .expect("prune");
    let feb15 = NaiveDate::from_ymd_opt(2025, 2, 15).expect("day");
    assert_eq!(run.daily_before, Some(feb15));
    assert_eq!(run.deleted_from(Table::CounterDaily), 1, "{run:?}");

    // The replay holds more than the live counts did, in every month.
    let replay = views(&[
        ("k1", "2025-01-20", 9),
        ("k1", "2025-02-20", 6),
        ("k1", "2025-03-10", 4),
        ("k2", "2025-03-12", 2),
    ]);
    produce(&stack, "views.replay", &replay).await;
    let (code, out, err) = stack
        .command(
            "aggregator",
            &["backfill", "--from", "2025-01", "--to", "2025-03"],
        )
        .await
        .expect("backfill");
    assert_eq!(code, 1, "some months refused: {out}\n{err}");
    for m in ["2025-01", "2025-02"] {
        assert!(
            out.contains(&format!(
                "{m}: refused: daily rows before 2025-02-15 were deleted by retention"
            )),
            "{m}: {out}"
        );
    }
    assert!(out.contains("2025-03: rebuilt"), "{out}");
    // Without the refusal, k1 would gain January's 9 replayed views a second time.
    let totals = stack.totals().await.expect("totals");
    assert_eq!(totals.get("resource:k1"), Some(&(15 - 3 + 4)), "{totals:?}");
    assert_eq!(totals.get("resource:k2"), Some(&2));
    let daily = daily_rows(&stack, "view_counter_daily", "true").await;
    let day = |d: &str| d.parse::<NaiveDate>().expect("day");
    let want: Daily = [
        (("resource:k1".to_owned(), day("2025-02-20")), 5),
        (("resource:k1".to_owned(), day("2025-03-10")), 4),
        (("resource:k2".to_owned(), day("2025-03-12")), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(daily, want, "February untouched, March rebuilt");
    let refused = stack
        .rows(
            "SELECT params->>'month', 0::int8 FROM jobs
             WHERE kind = 'backfill' AND status = 'failed' AND result->>'outcome' = 'refused'
               AND error LIKE '%RETAIN_DAILY_DAYS%' ORDER BY 1",
        )
        .await
        .expect("jobs");
    let refused: Vec<&str> = refused.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        refused,
        ["2025-01", "2025-02"],
        "the refusals are in the jobs"
    );

    // The rebuild checks the mark itself, in its transaction (not only the early
    // check of `aggregator backfill`).
    let feb: Month = "2025-02".parse().expect("month");
    let job = backfill::create_job(&stack.db, feb, "views.replay")
        .await
        .expect("job");
    let lock = MonthLock::acquire(&stack.db_url, feb, Duration::ZERO)
        .await
        .expect("try")
        .expect("lock");
    let mut counts = viewpipe_store::Counts::default();
    counts.add("resource:k1", day("2025-02-20"), None);
    let result = |_: &backfill::Rebuilt| json!({"outcome": "rebuilt"});
    let direct = backfill::rebuild_month(lock.db(), feb, &counts, job, &result).await;
    lock.release().await.expect("release");
    assert!(
        matches!(
            direct,
            Err(backfill::RebuildError::Pruned { pruned_before, .. }) if pruned_before == feb15
        ),
        "{direct:?}"
    );
    assert_eq!(
        daily_rows(&stack, "view_counter_daily", "true").await,
        want,
        "nothing changed"
    );
    eprintln!(
        "retention backfill: mark {feb15} after pruning as of 2025-03-01 (1 row); backfill 2025-01..03 exit {code}: 2 months refused, March rebuilt 3 -> 4; k1 total {} (rebuilding January and February too would make it 16 + 9 + 1 = 26); a direct rebuild of February: {}",
        totals["resource:k1"],
        direct
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .split(" (RETAIN")
            .next()
            .unwrap_or_default()
    );
}

#[tokio::test]
async fn the_mark_waits_for_no_rebuild_and_one_pruner_runs_at_a_time() {
    let stack = Stack::start().await.expect("stack");
    let day = |d: &str| d.parse::<NaiveDate>().expect("day");
    let db = &stack.db;
    assert_eq!(retention::pruned_before(db).await.expect("mark"), None);
    assert_eq!(
        retention::raise_mark(db, day("2025-02-01"))
            .await
            .expect("raise"),
        Raised::To(day("2025-02-01"))
    );

    // A rebuild's transaction share-locks the mark: raising it neither waits nor moves it.
    let other = Database::connect(&stack.db_url).await.expect("connect");
    let rebuild = other.begin().await.expect("begin");
    assert_eq!(
        retention::mark_for_rebuild(&rebuild).await.expect("mark"),
        Some(day("2025-02-01"))
    );
    let started = Instant::now();
    let held = retention::raise_mark(db, day("2025-03-01"))
        .await
        .expect("raise");
    let waited = started.elapsed();
    assert_eq!(held, Raised::HeldAt(Some(day("2025-02-01"))));
    assert!(waited < Duration::from_secs(1), "did not wait: {waited:?}");
    rebuild.commit().await.expect("commit");
    assert_eq!(
        retention::raise_mark(db, day("2025-03-01"))
            .await
            .expect("raise"),
        Raised::To(day("2025-03-01"))
    );
    assert_eq!(
        retention::raise_mark(db, day("2025-01-01"))
            .await
            .expect("raise"),
        Raised::To(day("2025-03-01")),
        "never lowered"
    );

    // Another pruner's batch in progress: ours does nothing.
    db.execute_unprepared(
        "INSERT INTO visitor_salts (day, salt) VALUES ('2025-01-01', '\\x01'), ('2025-01-02', '\\x02')",
    )
    .await
    .expect("salts");
    let salts = Target::VisitorSalts {
        before: day("2025-02-01"),
    };
    let busy = other.begin().await.expect("begin");
    busy.execute_unprepared(&format!(
        "SELECT pg_try_advisory_xact_lock({}, 0)",
        retention::LOCK_CLASS
    ))
    .await
    .expect("lock");
    assert_eq!(
        retention::delete_batch(db, salts, 10).await.expect("batch"),
        Batch::Busy
    );
    assert_eq!(
        retention::raise_mark(db, day("2025-04-01"))
            .await
            .expect("raise"),
        Raised::Busy
    );
    let settings = RetentionSettings {
        retain_daily_days: 7,
        retain_jobs_days: 7,
        retention_interval: Duration::from_secs(60),
    };
    let run = aggregator::retention::prune(db, &settings, Utc::now(), &Shutdown::default())
        .await
        .expect("prune");
    assert!(run.busy && run.deleted == [0; 4], "{run:?}");
    busy.commit().await.expect("commit");

    // Shutdown stops a run before its next batch.
    let stopped = Shutdown::default();
    stopped.trigger();
    let run = aggregator::retention::prune(db, &settings, Utc::now(), &stopped)
        .await
        .expect("prune");
    assert!(run.stopped && run.deleted == [0; 4], "{run:?}");

    // In batches: the limit holds, the rest goes next.
    assert_eq!(
        retention::delete_batch(db, salts, 1).await.expect("batch"),
        Batch::Deleted(1)
    );
    assert_eq!(
        retention::delete_batch(db, salts, 10).await.expect("batch"),
        Batch::Deleted(1)
    );
    assert_eq!(
        retention::delete_batch(db, salts, 10).await.expect("batch"),
        Batch::Deleted(0)
    );
    eprintln!(
        "retention mark: raising it beside a rebuild's share lock answered {held:?} in {waited:?}; a busy pruner deleted nothing; batches of 1 then the rest"
    );
    other.close().await.ok();
}
