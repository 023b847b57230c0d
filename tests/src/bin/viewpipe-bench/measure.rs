//! Measurements against running services: the aggregator's counting rate and cost,
//! the ingest under load, and freshness.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use viewpipe_runtime::kafka;
use viewpipe_tests::chaos::metric;
use viewpipe_tests::{eventually, Service, Stack};

use crate::cost::{self, Postgres, Stores};
use crate::workload::Generator;

/// What one aggregator run showed.
pub struct AggregatorRun {
    /// Events counted (visible to reads) per second, from the group's assignment
    /// (seen as the first rebalance in its metrics) to the last event.
    pub counted_rate: f64,
    /// Events in Postgres per second, from the assignment to the last flush.
    pub durable_rate: Option<f64>,
    pub peak_rss_mib: f64,
    /// CPU seconds of the aggregator process, from its start to the last flush (or
    /// the last event counted, without `flushed`).
    pub cpu_seconds: Option<f64>,
    /// CPU seconds of the stores (and of this process, hosting the dev broker) over
    /// the same span.
    pub stores: Stores,
    /// Counter rows the flushes upserted (total and daily).
    pub rows: u64,
    /// Held so the aggregator keeps running until it is taken or the run dropped.
    pub aggregator: Option<Service>,
}

/// Starts an aggregator on `stack` and waits until it has consumed `events`
/// (counted, duplicate or invalid); with `flushed`, also until every partition's
/// position in Postgres reaches the end of the log, and then checks Postgres' grand
/// total is `flushed`.
pub async fn aggregator_run(
    stack: &Stack,
    extra: &[(&str, &str)],
    events: usize,
    flushed: Option<i64>,
) -> anyhow::Result<AggregatorRun> {
    let postgres = Postgres::find(&stack.db_url).await?;
    Postgres::wait_quiet(stack).await?;
    let before = Stores::read(postgres.as_ref(), &stack.redis_url).await?;
    let aggregator = stack.spawn_aggregator_process(extra).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<Instant> = None;
    let mut last_report = Instant::now();
    loop {
        let consumed = metric(&aggregator, "viewpipe_aggregator_events_total").await as usize;
        if first.is_none()
            && metric(&aggregator, "viewpipe_aggregator_rebalances_total").await > 0.0
        {
            first = Some(Instant::now());
        }
        if consumed >= events {
            break;
        }
        if Instant::now() > deadline {
            bail!("the aggregator consumed {consumed} of {events} events in 900 s");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  … {consumed} of {events} counted");
            last_report = Instant::now();
        }
        // Sparse: rendering the aggregator's metrics costs it CPU, which would count
        // as its own (at 25 ms it was a tenth of a uniform run's).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.unwrap_or_else(Instant::now);
    let counted_rate = events as f64 / first.elapsed().as_secs_f64().max(1e-9);
    let durable_rate = match flushed {
        Some(_) => {
            wait_positions(stack, events as i64, deadline).await;
            Some(events as f64 / first.elapsed().as_secs_f64().max(1e-9))
        }
        None => None,
    };
    let cpu_seconds = aggregator.pid().and_then(cost::process_seconds);
    let stores = Stores::read(postgres.as_ref(), &stack.redis_url)
        .await?
        .since(&before);
    if flushed.is_some() {
        wait_committed(stack, events as i64, deadline).await?;
    }
    let rows = metric(&aggregator, "viewpipe_aggregator_flushed_rows_total").await as u64;
    if let Some(total) = flushed {
        stack
            .wait_flushed_total(total, Duration::from_secs(60))
            .await?;
    }
    let peak_rss_mib = aggregator
        .peak_rss_kib()
        .context("no VmHWM for the aggregator (exited?)")? as f64
        / 1024.0;
    Ok(AggregatorRun {
        counted_rate,
        durable_rate,
        peak_rss_mib,
        cpu_seconds,
        stores,
        rows,
        aggregator: Some(aggregator),
    })
}

/// Waits until the partitions' flushed positions in Postgres add up to `events` (a
/// small read, unlike summing the counters, so the wait costs Postgres little).
async fn wait_positions(stack: &Stack, events: i64, deadline: Instant) {
    // The group is the stack's own generated name, safe to write into the query.
    let sql = format!(
        "SELECT 'positions', COALESCE(sum(next_offset), 0)::int8 FROM aggregator_partitions
         WHERE consumer_group = '{}' AND topic = 'views'",
        stack.group
    );
    let sql = &sql;
    let check = move || async move {
        let rows = stack.rows(sql).await.map_err(|e| e.to_string())?;
        let n = rows.first().map_or(0, |r| r.1);
        (n >= events)
            .then_some(())
            .ok_or_else(|| format!("positions up to {n} of {events} events"))
    };
    eventually(
        left(deadline),
        "Postgres holds every event's position",
        check,
    )
    .await;
}

/// Waits until the group's offsets committed to Kafka add up to `events`. The
/// aggregator commits them once it has taken in its flush's result, metrics
/// included, and that comes after the Postgres commit [`wait_positions`] sees:
/// without this wait, the last flush's rows could be missing from the count.
async fn wait_committed(stack: &Stack, events: i64, deadline: Instant) -> anyhow::Result<()> {
    let settings = kafka::KafkaSettings::plain(stack.broker.addr().to_string());
    let consumer: BaseConsumer =
        kafka::consumer_config(&settings, &stack.group, Duration::from_secs(6))
            .create()
            .context("a client to read the group's offsets")?;
    let mut partitions = TopicPartitionList::new();
    for topic in consumer
        .fetch_metadata(Some("views"), KAFKA_TIMEOUT)?
        .topics()
    {
        for p in topic.partitions() {
            partitions.add_partition(topic.name(), p.id());
        }
    }
    let (consumer, partitions) = (Arc::new(consumer), &partitions);
    let check = move || {
        let (consumer, partitions) = (consumer.clone(), partitions.clone());
        async move {
            let n = tokio::task::spawn_blocking(move || committed(&consumer, partitions))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            (n >= events)
                .then_some(())
                .ok_or_else(|| format!("offsets up to {n} of {events} events"))
        }
    };
    eventually(
        left(deadline),
        "the aggregator commits every event's offset to Kafka",
        check,
    )
    .await;
    Ok(())
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// What is left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The sum of the group's committed offsets on `partitions` (a partition without
/// one counts 0).
fn committed(consumer: &BaseConsumer, partitions: TopicPartitionList) -> KafkaResult<i64> {
    let committed = consumer.committed_offsets(partitions, KAFKA_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum())
}

/// The bytes Redis uses for the stack's deployment (`MEMORY USAGE` of each of its
/// keys, so other tenants of the same Redis do not count) and how many keys it has.
pub async fn redis_bytes(stack: &Stack) -> anyhow::Result<(i64, usize)> {
    let (mut conn, keys) = stack.redis_keys().await?;
    let mut bytes = 0;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0);
        }
        let sizes: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
        bytes += sizes.into_iter().flatten().sum::<i64>();
    }
    Ok((bytes, keys.len()))
}

/// Request rate and latency of `POST /api/views`.
pub struct PostLoad {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: usize,
}

/// `connections` clients post single views back to back for `seconds`.
pub async fn post_load(
    ingest: &Service,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<PostLoad> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = ingest.url("/api/views");
    let until = Instant::now() + Duration::from_secs(seconds);
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (http, url, failed) = (http.clone(), url.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0usize;
                while Instant::now() < until {
                    let id = Generator::content_id((c * 7919 + n * 104_729) % 100_000);
                    n += 1;
                    let body = json!({"contentId": id, "contentType": "resource", "path": "/r/x"});
                    let sent = Instant::now();
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 202 => latencies.push(sent.elapsed()),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(PostLoad {
        rate: latencies.len() as f64 / elapsed,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        failed: failed.load(Ordering::Relaxed),
    })
}

/// The POST load with `wrk` (when it is installed): its C event loop leaves more of
/// the 2 cores to the ingest than the built-in client does. `None` without `wrk`.
pub fn post_load_wrk(
    ingest: &Service,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Option<PostLoad>> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(None);
    }
    let script = std::env::temp_dir().join(format!("viewpipe-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, string.format('{"contentId":"wrk-%d","contentType":"resource","path":"/r/x"}', n % 100000))
end
"#,
    )?;
    let out = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(ingest.url("/api/views"))
        .output()
        .context("run wrk")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let ms = |v: &str| -> f64 {
        let (number, unit) =
            v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = number.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let rate: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("no Requests/sec from wrk")?;
    let failed = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Some(PostLoad {
        rate,
        p50_ms: field("50%").map_or(f64::NAN, ms),
        p99_ms: field("99%").map_or(f64::NAN, ms),
        failed,
    }))
}

pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Events per second accepted by `POST /api/views/batch` (arrays of 1000), from
/// `clients` clients for `seconds`.
pub async fn batch_load(ingest: &Service, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = ingest.url("/api/views/batch");
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, url) = (http.clone(), url.clone());
            let body: Vec<Value> = (0..1000)
                .map(|i| {
                    json!({"contentId": Generator::content_id(c * 1000 + i), "contentType": "resource", "path": "/r/x"})
                })
                .collect();
            let body = serde_json::to_vec(&body).unwrap_or_default();
            tokio::spawn(async move {
                let mut accepted = 0u64;
                while Instant::now() < until {
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if let Ok(r) = response {
                        if let Ok(v) = r.json::<Value>().await {
                            accepted += v["accepted"].as_u64().unwrap_or(0);
                        }
                    }
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await?;
    }
    Ok(accepted as f64 / started.elapsed().as_secs_f64())
}

/// 202-to-visible latencies while `busy` is set: a probe view through the ingest
/// every 200 ms, each read back with GET every 20 ms until it shows. Probes
/// overlap, so a slow one does not thin out the sample.
pub async fn freshness(ingest: &Service, busy: Arc<AtomicBool>) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let run = rand::random::<u32>();
    let mut probes = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n = 0;
    while busy.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let id = format!("probe-{run:08x}-{n}");
        let http = http.clone();
        let post = ingest.url("/api/views");
        let get = ingest.url(&format!("/api/views?contentType=resource&contentId={id}"));
        probes.push(tokio::spawn(async move {
            let response = http
                .post(post)
                .json(&json!({"contentId": id, "contentType": "resource"}))
                .send()
                .await?;
            if response.status() != 202 {
                bail!("probe view answered {}", response.status());
            }
            let acked = Instant::now();
            loop {
                let count = http.get(&get).send().await?.json::<Value>().await?["count"]
                    .as_i64()
                    .unwrap_or(0);
                if count >= 1 {
                    return Ok(acked.elapsed());
                }
                if acked.elapsed() > Duration::from_secs(30) {
                    bail!("probe view {id} not visible after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut seen = Vec::with_capacity(probes.len());
    for probe in probes {
        seen.push(probe.await??);
    }
    seen.sort();
    Ok(seen)
}

/// Publishes `lines` views (the API's object form, Zipf-free: 10,000 keys) with
/// `ingest publish` and returns the events per second it reports.
pub async fn publish(stack: &Stack, lines: usize) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let path = std::env::temp_dir().join(format!("vp-bench-publish-{}.ndjson", stack.id));
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for i in 0..lines {
            writeln!(
                w,
                r#"{{"contentType":"resource","contentId":"p{}","occurredAt":"2025-01-{:02}T10:00:00Z"}}"#,
                i % 10_000,
                1 + i % 28
            )?;
        }
        w.flush()?;
    }
    let file = path.to_string_lossy().into_owned();
    let (code, out, err) = stack
        .command("ingest", &["publish", "--topic", "views.replay", &file])
        .await?;
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(code == 0, "ingest publish failed: {out}{err}");
    // "published N events to T in S s (R events/s); rejected 0"
    let rate = out
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|r| r.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate in: {out}"))?;
    Ok(rate)
}
