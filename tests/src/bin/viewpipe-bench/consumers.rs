//! The consumers viewpipe is measured against, each run in a process of its own so
//! that its CPU time is its own: the floors (reading the log and doing nothing;
//! parsing and counting in a map) and two designs a user might build instead (the
//! seed design with care; one Postgres upsert per event).
//!
//! The benchmark starts itself with `--consumer <kind>`; the child prints one JSON
//! line with what it did.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::ClientContext;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};

use viewpipe_runtime::kafka;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Reads every message and touches its payload.
    Raw,
    /// Parses each event and counts it per key and day in a `HashMap`.
    Naive,
    /// The seed design with care: per event a pipelined `INCR` and `SADD` to a dirty
    /// set; every flush interval `SMEMBERS`, pipelined `GETDEL`, and one increment
    /// upsert per key and day, in one transaction.
    Seed,
    /// One upsert of the total and daily rows per event.
    Upsert,
}

/// What the child was asked to do.
#[derive(Clone, Debug, clap::Args)]
pub struct Job {
    #[arg(long, hide = true, default_value = "")]
    pub brokers: String,
    #[arg(long, hide = true, default_value_t = 0)]
    pub expected: usize,
    /// Stop after this many seconds of consuming (0: only at `expected`).
    #[arg(long, hide = true, default_value_t = 0)]
    pub seconds: u64,
    #[arg(long, hide = true, default_value = "")]
    pub db_url: String,
    #[arg(long, hide = true, default_value = "")]
    pub redis_url: String,
    #[arg(long, hide = true, default_value = "")]
    pub redis_prefix: String,
    /// The seed design's flush interval: the contract's `FLUSH_INTERVAL_MS` default.
    #[arg(long, hide = true, default_value_t = 5000)]
    pub flush_ms: u64,
}

/// The child's report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub events: u64,
    /// Events per second from the group's assignment to the end of the work.
    pub rate: f64,
    /// The child's own CPU seconds from its first message to the end of the work
    /// (start-up and joining the group left out).
    pub cpu_seconds: f64,
    /// Counter rows the design upserted.
    pub rows: u64,
}

/// Notes when the group assigned partitions.
#[derive(Default)]
struct Assigned {
    at: std::sync::Mutex<Option<Instant>>,
}

impl ClientContext for Assigned {}

impl ConsumerContext for Assigned {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
            at.get_or_insert_with(Instant::now);
        }
    }
}

/// The fields of an event the designs read (the aggregator reads these and more).
#[derive(Deserialize)]
struct View {
    #[serde(rename = "contentType")]
    content_type: String,
    #[serde(rename = "contentId")]
    content_id: String,
    #[serde(rename = "occurredAt")]
    occurred_at: String,
}

impl View {
    fn parse(payload: &[u8]) -> anyhow::Result<(String, String)> {
        let v: View = serde_json::from_slice(payload)?;
        let day = v.occurred_at.get(..10).context("occurredAt")?.to_owned();
        Ok((format!("{}:{}", v.content_type, v.content_id), day))
    }
}

/// Runs `kind` on the `views` topic and prints its [`Report`].
pub async fn child(kind: Kind, job: Job) -> anyhow::Result<()> {
    let group = format!("bench-{kind:?}-{:08x}", rand::random::<u32>()).to_lowercase();
    let mut config = kafka::consumer_config(
        &kafka::KafkaSettings::plain(&job.brokers),
        &group,
        Duration::from_secs(6),
    );
    if kind == Kind::Upsert {
        // It reads a few thousand events in its time: librdkafka's default prefetch
        // (100k messages a partition) would charge it with fetching most of the log.
        config.set("queued.min.messages", "1000");
    }
    let consumer: BaseConsumer<Assigned> = config
        .create_with_context(Assigned::default())
        .context("bench consumer")?;
    consumer.subscribe(&["views"])?;
    let mut design = match kind {
        Kind::Raw | Kind::Naive => None,
        Kind::Seed => Some(Design::Seed(Box::new(Seed::new(&job).await?))),
        Kind::Upsert => Some(Design::Upsert(Database::connect(&job.db_url).await?)),
    };
    let mut naive: HashMap<(String, String), u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut seen, mut bytes, mut rows) = (0usize, 0usize, 0u64);
    let mut stop_at: Option<Instant> = None;
    let mut cpu_at_first: Option<f64> = None;
    while seen < job.expected && stop_at.is_none_or(|s| Instant::now() < s) {
        if Instant::now() > deadline {
            bail!("{kind:?} read {seen} of {} messages in 600 s", job.expected);
        }
        // Short enough for the seed design's flush timer, long enough not to spin.
        let message = consumer.poll(Duration::from_millis(5));
        if stop_at.is_none() && job.seconds > 0 {
            if let Some(at) = *consumer
                .context()
                .at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
            {
                stop_at = Some(at + Duration::from_secs(job.seconds));
            }
        }
        let message = match message {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "bench consumer error");
                continue;
            }
            None => {
                if let Some(Design::Seed(seed)) = &mut design {
                    rows += seed.idle().await?;
                }
                continue;
            }
        };
        // Borrowed from librdkafka's buffer, as the aggregator reads it.
        let payload = message.payload().unwrap_or_default();
        seen += 1;
        cpu_at_first.get_or_insert_with(crate::cost::own_seconds);
        match (&mut design, kind) {
            (None, Kind::Raw) => bytes += payload.len(),
            (None, _) => *naive.entry(View::parse(payload)?).or_default() += 1,
            (Some(Design::Seed(seed)), _) => rows += seed.add(payload).await?,
            (Some(Design::Upsert(db)), _) => rows += upsert_one(db, payload).await?,
        }
    }
    if let Some(Design::Seed(seed)) = &mut design {
        rows += seed.finish().await?;
    }
    let assigned = *consumer
        .context()
        .at
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let elapsed = assigned.map_or(Duration::ZERO, |a| a.elapsed());
    std::hint::black_box((bytes, naive.len()));
    let report = Report {
        events: seen as u64,
        rate: seen as f64 / elapsed.as_secs_f64().max(1e-9),
        cpu_seconds: crate::cost::own_seconds() - cpu_at_first.unwrap_or(0.0),
        rows,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

enum Design {
    Seed(Box<Seed>),
    Upsert(DatabaseConnection),
}

/// The total and daily upsert both designs use, as the contract's tables take it.
const UPSERT: &str = "WITH t AS (
         INSERT INTO bench_total AS t (key, namespace, entity_id, total, created_at, updated_at)
         VALUES ($1, split_part($1, ':', 1), substr($1, strpos($1, ':') + 1), $3, now(), now())
         ON CONFLICT (key) DO UPDATE SET total = t.total + EXCLUDED.total, updated_at = now())
     INSERT INTO bench_daily AS d (key, day, count, created_at, updated_at)
     VALUES ($1, $2::date, $3, now(), now())
     ON CONFLICT (key, day) DO UPDATE SET count = d.count + EXCLUDED.count, updated_at = now()";

/// Tables shaped like the contract's (same keys, indexes and fill factor) for the
/// designs to write, so that they never touch viewpipe's rows.
pub async fn create_tables(db_url: &str) -> anyhow::Result<()> {
    let db = Database::connect(db_url).await?;
    db.execute_unprepared(
        "DROP TABLE IF EXISTS bench_total, bench_daily;
         CREATE TABLE bench_total (LIKE view_counter_total INCLUDING ALL) WITH (fillfactor = 70);
         CREATE TABLE bench_daily (LIKE view_counter_daily INCLUDING ALL) WITH (fillfactor = 70);",
    )
    .await?;
    db.close().await?;
    Ok(())
}

async fn upsert_one(db: &DatabaseConnection, payload: &[u8]) -> anyhow::Result<u64> {
    let (key, day) = View::parse(payload)?;
    db.execute(Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        UPSERT,
        vec![key.into(), day.into(), 1i64.into()],
    ))
    .await?;
    Ok(2)
}

/// The seed design, done with care.
struct Seed {
    redis: redis::aio::MultiplexedConnection,
    db: DatabaseConnection,
    prefix: String,
    dirty: String,
    pipe: redis::Pipeline,
    queued: usize,
    every: Duration,
    last_flush: Instant,
}

impl Seed {
    async fn new(job: &Job) -> anyhow::Result<Self> {
        let redis = redis::Client::open(job.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let prefix = format!("{}seed:", job.redis_prefix);
        Ok(Self {
            redis,
            db: Database::connect(&job.db_url).await?,
            dirty: format!("{prefix}dirty"),
            prefix,
            pipe: redis::pipe(),
            queued: 0,
            every: Duration::from_millis(job.flush_ms),
            last_flush: Instant::now(),
        })
    }

    /// Counts one event; flushes when the interval is up.
    async fn add(&mut self, payload: &[u8]) -> anyhow::Result<u64> {
        let (key, day) = View::parse(payload)?;
        let member = format!("{key}|{day}");
        self.pipe
            .incr(format!("{}{member}", self.prefix), 1)
            .ignore()
            .sadd(&self.dirty, member)
            .ignore();
        self.queued += 1;
        if self.queued >= 500 {
            self.send().await?;
        }
        self.idle().await
    }

    /// Sends what is queued, and flushes when the interval is up.
    async fn idle(&mut self) -> anyhow::Result<u64> {
        if self.last_flush.elapsed() < self.every {
            return Ok(0);
        }
        self.finish().await
    }

    async fn send(&mut self) -> anyhow::Result<()> {
        if self.queued > 0 {
            let pipe = std::mem::replace(&mut self.pipe, redis::pipe());
            pipe.exec_async(&mut self.redis).await?;
            self.queued = 0;
        }
        Ok(())
    }

    /// Sends what is queued and flushes: `SMEMBERS`, `GETDEL` each, one increment
    /// upsert per key and day in one transaction, then `SREM` of what was flushed.
    async fn finish(&mut self) -> anyhow::Result<u64> {
        self.send().await?;
        self.last_flush = Instant::now();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.dirty)
            .query_async(&mut self.redis)
            .await?;
        let mut rows = 0;
        for chunk in members.chunks(1000) {
            let mut pipe = redis::pipe();
            for member in chunk {
                pipe.cmd("GETDEL").arg(format!("{}{member}", self.prefix));
            }
            let counts: Vec<Option<i64>> = pipe.query_async(&mut self.redis).await?;
            let txn = self.db.begin().await?;
            for (member, count) in chunk.iter().zip(counts) {
                let Some(count) = count.filter(|c| *c != 0) else {
                    continue;
                };
                let (key, day) = member.rsplit_once('|').context("dirty member")?;
                txn.execute(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    UPSERT,
                    vec![key.into(), day.into(), count.into()],
                ))
                .await?;
                rows += 2;
            }
            txn.commit().await?;
            let mut srem = redis::cmd("SREM");
            srem.arg(&self.dirty).arg(chunk);
            srem.exec_async(&mut self.redis).await?;
        }
        Ok(rows)
    }
}

/// Starts this benchmark as a `kind` consumer of `stack`'s views and waits for its
/// report.
pub async fn run(
    stack: &viewpipe_tests::Stack,
    kind: Kind,
    expected: usize,
    seconds: u64,
) -> anyhow::Result<Report> {
    let kind_name = format!("{kind:?}").to_lowercase();
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--consumer", &kind_name])
        .args(["--brokers", &stack.broker.addr().to_string()])
        .args(["--expected", &expected.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(["--db-url", &stack.db_url])
        .args(["--redis-url", &stack.redis_url])
        .args(["--redis-prefix", &stack.redis_prefix])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("the {kind_name} consumer failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("the {kind_name} consumer said: {text}"))
}
