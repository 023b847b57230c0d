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
use aggregator::store::backfill::{self, Month, MonthLock};
use aggregator::store::retention::{self, Batch, Raised, Table, Target};
use viewpipe_runtime::Shutdown;
use viewpipe_tests::openapi::Api;
use viewpipe_tests::Stack;

mod pruning;
mod rebuild;

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
