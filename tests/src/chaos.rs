//! Tools for the failure tests: a paced load of acknowledged views, a reader that
//! watches counts while things break, and the final exactness check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::{Service, Stack};

/// A stream of views over `keys` keys and `days` UTC days, posted to the ingest at
/// about `rate` per second by `concurrency` clients. A view is retried with the same
/// `eventId` until the ingest acknowledges it (a 202), as a careful client would.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub events: usize,
    pub keys: usize,
    pub days: usize,
    pub rate: f64,
    pub concurrency: usize,
}

impl Load {
    pub fn key(&self, i: usize) -> String {
        format!("c{:03}", i % self.keys)
    }

    fn at(&self, i: usize, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::days((i / self.keys % self.days) as i64)
            - chrono::Duration::minutes(1)
    }

    /// What the database must hold once all views are counted.
    pub fn expected(&self, now: DateTime<Utc>) -> BTreeMap<(String, NaiveDate), i64> {
        let mut out = BTreeMap::new();
        for i in 0..self.events {
            *out.entry((self.key(i), self.at(i, now).date_naive()))
                .or_insert(0) += 1;
        }
        out
    }
}

/// Live counters of a running load.
#[derive(Default)]
pub struct Progress {
    /// Views acknowledged so far.
    pub acked: AtomicUsize,
    /// Extra attempts after a failure (503, connection error).
    pub retries: AtomicUsize,
    /// Per key: views sent at least once (an upper bound for any count read).
    pub sent: Vec<AtomicI64>,
    /// Reads failing before this instant (ms since the Unix epoch) are excused: a
    /// test declares the recovery window of each fault it causes.
    pub excused_until_ms: AtomicI64,
}

impl Progress {
    pub fn new(keys: usize) -> Arc<Self> {
        Arc::new(Self {
            sent: (0..keys).map(|_| AtomicI64::new(0)).collect(),
            ..Self::default()
        })
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Excuses unavailable reads from now until `window` from now (a fault and the
    /// recovery the docs promise for it).
    pub fn recovery_window(&self, window: Duration) {
        let until = Utc::now().timestamp_millis() + window.as_millis() as i64;
        self.excused_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    fn excused(&self) -> bool {
        Utc::now().timestamp_millis() < self.excused_until_ms.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` views were acknowledged.
    pub async fn reached(&self, n: usize) {
        while self.acked() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Posts every view of `load` through `ingest`; returns once all were acknowledged.
pub async fn run_load(
    load: Load,
    ingest_url: String,
    run_id: String,
    now: DateTime<Utc>,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..load.events)
        .map(|i| {
            let (http, ingest_url, run_id, progress) = (&http, &ingest_url, &run_id, &progress);
            async move {
                let due = started + Duration::from_secs_f64(i as f64 / load.rate);
                tokio::time::sleep_until(due.into()).await;
                let body = json!({
                    "contentId": load.key(i),
                    "contentType": "resource",
                    "path": format!("/r/{}", load.key(i)),
                    "eventId": format!("{run_id}-{i}"),
                    "occurredAt": load.at(i, now).to_rfc3339(),
                });
                progress.sent[i % load.keys].fetch_add(1, Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let status = match http
                        .post(format!("{ingest_url}/api/views"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    if status == 202 {
                        progress.acked.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    if status == 400 || Instant::now() > deadline {
                        anyhow::bail!("view {i} not acknowledged: last status {status}");
                    }
                    progress.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(load.concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What the watching reader saw.
#[derive(Debug, Default)]
pub struct WatchReport {
    /// GETs answered 200 with a count.
    pub reads: usize,
    /// GETs that did not (503 while a store recovers, a timeout, an error).
    pub unavailable: usize,
    /// Of those, made outside every declared recovery window.
    pub unexcused: usize,
    /// `(key, before, after)` where a count went down.
    pub decreases: Vec<(String, i64, i64)>,
    /// `(key, count, sent)` where a count exceeded the views ever sent.
    pub overcounts: Vec<(String, i64, i64)>,
}

/// Share of GETs outside recovery windows that must succeed.
const MIN_AVAILABILITY: f64 = 0.9;

impl WatchReport {
    pub fn assert_clean(&self) {
        assert!(self.reads > 0, "the reader made no reads");
        assert!(
            self.decreases.is_empty(),
            "counts went down: {:?}",
            &self.decreases[..self.decreases.len().min(10)]
        );
        assert!(
            self.overcounts.is_empty(),
            "counts above the views sent: {:?}",
            &self.overcounts[..self.overcounts.len().min(10)]
        );
        let counted = self.reads + self.unexcused;
        let available = self.reads as f64 / counted.max(1) as f64;
        assert!(
            available >= MIN_AVAILABILITY,
            "only {:.1}% of the GETs outside recovery windows succeeded ({} of {counted})",
            available * 100.0,
            self.reads
        );
    }
}

/// Polls GET for every key of `load` until `stop` (8 at a time), checking that no
/// count goes down and none exceeds the views sent for its key. Only 200 answers
/// are reads; failures outside the declared recovery windows count against the
/// availability rule of [`WatchReport::assert_clean`].
pub async fn watch(
    load: Load,
    ingest_url: String,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> WatchReport {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut last: Vec<i64> = vec![0; load.keys];
    let mut report = WatchReport::default();
    while !stop.load(Ordering::Relaxed) {
        let answers: Vec<(usize, Option<i64>, bool)> = futures::stream::iter(0..load.keys)
            .map(|k| {
                let (http, progress) = (&http, &progress);
                let url = format!(
                    "{ingest_url}/api/views?contentType=resource&contentId={}",
                    load.key(k)
                );
                async move {
                    let count = match http.get(url).send().await {
                        Ok(r) if r.status() == 200 => r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|b| b["count"].as_i64()),
                        _ => None,
                    };
                    (k, count, progress.excused())
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (k, count, excused) in answers {
            let Some(count) = count else {
                report.unavailable += 1;
                if !excused {
                    report.unexcused += 1;
                }
                continue;
            };
            report.reads += 1;
            let key = load.key(k);
            let sent = progress.sent[k].load(Ordering::Relaxed);
            if count < last[k] {
                report.decreases.push((key.clone(), last[k], count));
            }
            if count > sent {
                report.overcounts.push((key, count, sent));
            }
            last[k] = last[k].max(count);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report
}

/// Waits for Postgres to hold every view, then checks each total, daily row and GET.
pub async fn assert_exact(
    stack: &Stack,
    ingest: &Service,
    expected: &BTreeMap<(String, NaiveDate), i64>,
    within: Duration,
) {
    let sent: i64 = expected.values().sum();
    stack
        .wait_flushed_total(sent, within)
        .await
        .expect("all views flushed");
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for ((id, _), n) in expected {
        *totals.entry(format!("resource:{id}")).or_default() += n;
    }
    let rows = stack.totals().await.expect("totals");
    assert_eq!(rows, totals, "view_counter_total");
    let daily: BTreeMap<String, i64> = stack
        .rows("SELECT key || '@' || day::text, count FROM view_counter_daily")
        .await
        .expect("daily")
        .into_iter()
        .collect();
    let want_daily: BTreeMap<String, i64> = expected
        .iter()
        .map(|((id, day), n)| (format!("resource:{id}@{day}"), *n))
        .collect();
    assert_eq!(daily, want_daily, "view_counter_daily");
    let mismatched = stack
        .rows(
            "SELECT t.key, (t.total - COALESCE(SUM(d.count), 0))::int8 FROM view_counter_total t
             LEFT JOIN view_counter_daily d ON d.key = t.key
             GROUP BY t.key, t.total HAVING t.total <> COALESCE(SUM(d.count), 0)",
        )
        .await
        .expect("sum check");
    assert!(
        mismatched.is_empty(),
        "total != sum(daily) for {mismatched:?}"
    );
    let http = reqwest::Client::new();
    for (key, want) in &totals {
        let id = key.trim_start_matches("resource:");
        let url = ingest.url(&format!("/api/views?contentType=resource&contentId={id}"));
        let body: Value = http
            .get(url)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        assert_eq!(body["count"].as_i64(), Some(*want), "GET count of {key}");
    }
}

/// Waits until [`metric_sum`] of `series` over `services` reaches `at_least`;
/// returns it, or panics naming `what` after `within`.
pub async fn wait_metric(
    services: &[&Service],
    series: &str,
    at_least: f64,
    within: std::time::Duration,
    what: &str,
) -> f64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let value: f64 = futures::future::join_all(services.iter().map(|s| metric(s, series)))
            .await
            .into_iter()
            .sum();
        if value >= at_least {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {series} at {value} after {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// [`metric`] summed over several services.
pub async fn metric_sum(services: &[Service], series: &str) -> f64 {
    futures::future::join_all(services.iter().map(|s| metric(s, series)))
        .await
        .into_iter()
        .sum()
}

/// Sums a counter or gauge from a service's `/metrics` (all label sets matching
/// `series`, e.g. `viewpipe_aggregator_events_total{result="invalid"}`).
/// Only a child process's metrics are its own: services built in the test process
/// share one recorder, so reading one of them here is a mistake in the test.
pub async fn metric(service: &Service, series: &str) -> f64 {
    assert!(
        service.is_process(),
        "{} runs in the test process, whose metrics every in-process service shares: start it with a *_process spawn to read its metrics",
        service.name()
    );
    let Ok(response) = reqwest::get(service.url("/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
