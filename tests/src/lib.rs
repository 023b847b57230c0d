//! Test harness: a throwaway stack per test, with real processes.
//!
//! Each [`Stack`] has its own broker (the dev broker in this process on a free port,
//! or a private nisshi process: see [`broker`]), its own
//! Postgres database (`vp_test_<id>`, migrated) and its own Redis key prefix, so tests
//! run side by side without seeing each other. `ingest` and `aggregator` are built in
//! the test process by their own `App::build` on port 0, or run as child processes
//! of the binaries `cargo build --bins` built where a test kills or signals them
//! (see [`service`]). Logs go to `target/test-logs/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::process::Command;

use crate::broker::Broker;

pub mod broker;
pub mod browser;
pub mod chaos;
pub mod faults;
pub mod openapi;
pub mod pg_server;
pub mod pgproxy;
pub mod redis_server;
pub mod service;
pub mod tls;

pub use service::{Kind, Service};

pub const PARTITIONS: i32 = 8;

/// Postgres server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A free loopback port (bound and released; fine for tests).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// `target/test-logs/`, where the services' (and private brokers') logs go.
pub fn log_dir() -> PathBuf {
    let dir = bin("ingest")
        .parent()
        .map_or_else(|| PathBuf::from("target"), |d| d.join(".."))
        .join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A binary of this workspace built beside the running one: tests run from
/// `target/<profile>/deps/`, the benchmark from `target/<profile>/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("target dir");
    let path = [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!(
            "{name} not built next to {}: run `cargo build --workspace --bins` (deploy/local/test does)",
            dir.display()
        )
    })
}

pub struct Stack {
    pub id: String,
    pub broker: Broker,
    pub db_url: String,
    pub db: DatabaseConnection,
    pub redis_prefix: String,
    /// The Redis (or Redis Cluster) the services use: [`redis_url`] unless a test
    /// gave its own ([`Stack::with_redis`]).
    pub redis_url: String,
    pub group: String,
    /// The server's admin URL the test database was created with.
    admin_url: String,
    /// Set once [`Stack::cleanup`] ran, so that dropping does not do it again.
    cleaned: bool,
}

impl Drop for Stack {
    /// A test that fails half-way still drops its database and Redis keys: on a
    /// thread of its own (a runtime cannot block inside another), within 20 s.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (admin, id) = (self.admin_url.clone(), self.id.clone());
        let (redis, prefix) = (self.redis_url.clone(), self.redis_prefix.clone());
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let cleanup = drop_database_and_keys(&admin, &id, &redis, &prefix);
                match tokio::time::timeout(Duration::from_secs(20), cleanup).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("stack {id}: cleanup failed: {e:#}"),
                    Err(_) => eprintln!("stack {id}: cleanup timed out"),
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// A connection to the Redis (or Redis Cluster) at `url` and every key under
/// `prefix` (SCAN, so a large shared keyspace is never blocked on).
async fn keys_under(
    url: &str,
    prefix: &str,
) -> anyhow::Result<(viewpipe_runtime::redis_conn::RedisConn, Vec<String>)> {
    let timeouts = viewpipe_runtime::redis_conn::Timeouts::default();
    let conn = viewpipe_runtime::redis_conn::RedisConn::connect(url, timeouts).await?;
    let keys = conn.scan(&format!("{prefix}:*")).await?;
    Ok((conn, keys))
}

/// Drops database `vp_test_<id>` on the server of `admin` and every Redis key under
/// `prefix`. A server already gone (a private one the test stopped) is skipped.
async fn drop_database_and_keys(
    admin: &str,
    id: &str,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut opts = sea_orm::ConnectOptions::new(admin);
    opts.connect_timeout(Duration::from_secs(2))
        .sqlx_logging(false);
    if let Ok(admin) = Database::connect(opts).await {
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS vp_test_{id} WITH (FORCE)"
            ))
            .await?;
        admin.close().await.ok();
    }
    if let Ok((conn, keys)) = keys_under(redis_url, prefix).await {
        conn.per_partition(&keys, false, String::clone, |pipe, key| {
            pipe.cmd("DEL").arg(key);
        })
        .await?;
    }
    Ok(())
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::with_partitions(PARTITIONS).await
    }

    /// A stack whose topics have `partitions` partitions.
    pub async fn with_partitions(partitions: i32) -> anyhow::Result<Self> {
        Self::on_postgres(&admin_url(), partitions).await
    }

    /// A stack whose database lives on the Postgres server of `admin`.
    pub async fn on_postgres(admin: &str, partitions: i32) -> anyhow::Result<Self> {
        let admin_url = admin.to_owned();
        let id = format!("{:08x}", rand::random::<u32>());
        let broker = Broker::start().await?;
        for topic in ["views", "views.replay", "views.dlq"] {
            broker.create_topic(topic, partitions)?;
        }
        let admin = Database::connect(&admin_url)
            .await
            .context("connect to the admin database")?;
        let db_name = format!("vp_test_{id}");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
            .await
            .context("create the test database")?;
        // The admin URL's database replaced, its query (e.g. sslmode) kept.
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), ""), |(b, q)| (b, q));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let db_url = format!("{base}/{db_name}{query}");
        let db = Database::connect(&db_url).await?;
        viewpipe_schema::version::migrate(&db).await?;
        Ok(Self {
            redis_prefix: format!("vp_test_{id}"),
            redis_url: redis_url(),
            group: format!("vp-test-{id}"),
            id,
            broker,
            db_url,
            db,
            admin_url,
            cleaned: false,
        })
    }

    /// Kafka settings for this stack's broker, for clients a test makes itself.
    pub fn kafka(&self) -> viewpipe_runtime::kafka::KafkaSettings {
        viewpipe_runtime::kafka::KafkaSettings::plain(self.broker.addr().to_string())
    }

    /// The environment every service of this stack runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("KAFKA_BROKERS", self.broker.addr().to_string()),
            ("DATABASE_URL", self.db_url.clone()),
            ("REDIS_URL", self.redis_url.clone()),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("CONSUMER_GROUP", self.group.clone()),
            ("LOG_FORMAT", "text".to_owned()),
            ("RUST_LOG", "info,sqlx=warn".to_owned()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
            // The suites post past days and months through the API to build their
            // history; the tests of the limit itself set their own.
            ("MAX_EVENT_AGE", "36500d".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Builds an ingest in the test process, with this stack's settings and
    /// `extra` (name, value) settings.
    pub async fn spawn_ingest(&self, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        Service::in_process(Kind::Ingest, &self.id, self.env_with(extra)).await
    }

    /// Builds an aggregator in the test process.
    pub async fn spawn_aggregator(&self, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        Service::in_process(Kind::Aggregator, &self.id, self.env_with(extra)).await
    }

    /// Starts an ingest as a child process: for tests that kill or signal it, or
    /// read its own metrics.
    pub async fn spawn_ingest_process(&self, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        Service::process(Kind::Ingest, &self.id, self.env_with(extra)).await
    }

    /// Starts an aggregator as a child process (see [`Stack::spawn_ingest_process`]).
    pub async fn spawn_aggregator_process(
        &self,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        Service::process(Kind::Aggregator, &self.id, self.env_with(extra)).await
    }

    /// Starts another build of `kind`'s binary, `exe`, as a child process with this
    /// stack's settings and `extra`.
    pub async fn spawn_process_of(
        &self,
        kind: Kind,
        exe: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        Service::process_of(kind, exe, &self.id, self.env_with(extra)).await
    }

    fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.env();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    /// Runs one of the project's binaries with `args` and this stack's environment
    /// to its end: its exit code, standard output and standard error.
    pub async fn command(
        &self,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<(i32, String, String)> {
        self.command_of(&bin(name), args).await
    }

    /// [`Stack::command`] with the binary at `exe`.
    pub async fn command_of(
        &self,
        exe: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<(i32, String, String)> {
        let name = exe.display();
        let out = tokio::process::Command::new(exe)
            .args(args)
            .envs(self.env())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("run {name}"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Messages in the views topic: the sum of its partitions' high watermarks.
    pub async fn published(&self) -> i64 {
        let brokers = self.broker.addr().to_string();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .expect("consumer");
            (0..PARTITIONS)
                .map(|p| {
                    consumer
                        .fetch_watermarks("views", p, Duration::from_secs(10))
                        .expect("watermarks")
                        .1
                })
                .sum()
        })
        .await
        .expect("watermarks task")
    }

    /// Produces `events` to `topic` as another application (or release) would: an
    /// idempotent producer, each keyed `"{contentType}:{contentId}"`, sent in order
    /// and all acknowledged before this returns.
    pub async fn produce(&self, topic: &str, events: &[serde_json::Value]) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.broker.addr().to_string())
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let sends = events.iter().map(|event| {
            let key = format!("{}:{}", event["contentType"], event["contentId"]).replace('"', "");
            let payload = event.to_string();
            let producer = &producer;
            async move {
                let record = FutureRecord::to(topic).key(&key).payload(&payload);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent.expect("produced");
        }
    }

    /// Waits until the views topic holds `n` messages: fails if it holds more, or
    /// fewer after 30 s.
    pub async fn wait_published(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.published().await;
            assert!(
                now <= n,
                "{now} views published, more than the {n} expected"
            );
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{now} views published after 30 s; expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drops the database and this stack's Redis keys now (dropping the stack does
    /// the same, errors aside).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        drop_database_and_keys(
            &self.admin_url,
            &self.id,
            &self.redis_url,
            &self.redis_prefix,
        )
        .await
    }

    /// This stack with the services using the Redis (or Redis Cluster) at `url`.
    pub fn with_redis(mut self, url: &str) -> Self {
        url.clone_into(&mut self.redis_url);
        self
    }

    /// A Redis connection and every key under this stack's prefix (SCAN, so a large
    /// shared keyspace is never blocked on).
    pub async fn redis_keys(
        &self,
    ) -> anyhow::Result<(viewpipe_runtime::redis_conn::RedisConn, Vec<String>)> {
        keys_under(&self.redis_url, &self.redis_prefix).await
    }

    /// Deletes every Redis key of this stack's deployment, as a Redis restart without
    /// persistence would (FLUSHALL would also wipe the keys of tests running beside
    /// this one): in one atomic step on one server, key by key on a cluster.
    /// Returns how many keys were deleted.
    pub async fn wipe_redis(&self) -> anyhow::Result<usize> {
        let (mut conn, keys) = self.redis_keys().await?;
        if conn.is_cluster() {
            conn.per_partition(&keys, false, String::clone, |pipe, key| {
                pipe.cmd("DEL").arg(key);
            })
            .await?;
            return Ok(keys.len());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in keys.chunks(1000) {
            pipe.cmd("DEL").arg(chunk).ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        Ok(keys.len())
    }

    /// Terminates every Postgres connection to this stack's database (the services'
    /// pools and this harness' own), as a Postgres restart would.
    pub async fn kill_postgres_connections(&self) -> anyhow::Result<usize> {
        let admin = Database::connect(&self.admin_url).await?;
        let rows = admin
            .query_all(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = 'vp_test_{}' AND pid <> pg_backend_pid()",
                    self.id
                ),
            ))
            .await?;
        admin.close().await.ok();
        Ok(rows.len())
    }

    /// Runs `aggregator flush` for this stack; returns its exit status and output.
    pub async fn flush_command(&self) -> anyhow::Result<(bool, String)> {
        let out = Command::new(bin("aggregator"))
            .arg("flush")
            .envs(self.env())
            .arg("--timeout-ms")
            .arg("20000")
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Runs a query returning `(text, int8)` rows.
    pub async fn rows(&self, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = self
            .db
            .query_all(Statement::from_string(sea_orm::DbBackend::Postgres, sql))
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
            .collect()
    }

    /// Postgres' grand total: every view flushed.
    pub async fn flushed_total(&self) -> anyhow::Result<i64> {
        let rows = self
            .rows("SELECT 'all', COALESCE(SUM(total), 0)::int8 FROM view_counter_total")
            .await?;
        Ok(rows.first().map_or(0, |r| r.1))
    }

    /// Every key's flushed total.
    pub async fn totals(&self) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
        Ok(self
            .rows("SELECT key, total FROM view_counter_total")
            .await?
            .into_iter()
            .collect())
    }

    /// Waits until Postgres' grand total reaches `expected` (and fails if it passes it).
    pub async fn wait_flushed_total(&self, expected: i64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let sum = self.flushed_total().await?;
            if sum == expected {
                return Ok(());
            }
            if sum > expected {
                bail!("Postgres holds {sum} views, more than the {expected} sent");
            }
            if Instant::now() > deadline {
                bail!("Postgres holds {sum} views after {within:?}; expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Polls `check` every 100 ms until it answers `Ok`, and returns that; once
/// `within` has passed, panics with `what` and the last `Err` (what was seen
/// instead). The one wait loop for "this becomes true soon".
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The directory holding the previous release's `ingest` and `aggregator`, built by
/// `deploy/local/previous` from the commit in `deploy/local/previous-release`.
pub fn previous_release() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let named = std::fs::read_to_string(repo.join("deploy/local/previous-release"))
        .expect("deploy/local/previous-release");
    let commit = named
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a commit in deploy/local/previous-release");
    let built = bin("ingest").canonicalize().expect("this build's ingest");
    let dir = built
        .parent()
        .and_then(|debug| debug.parent())
        .expect("target dir")
        .join("previous")
        .join(commit);
    assert!(
        dir.join("ingest").exists() && dir.join("aggregator").exists(),
        "the previous release's binaries are not built in {}: run deploy/local/previous",
        dir.display()
    );
    dir
}

#[allow(unsafe_code)]
pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we spawned; no memory is shared.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Sends `sig` to the process group `pgid` (a child started as a group leader).
#[allow(unsafe_code)]
pub(crate) fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) on the group of a child we spawned; no memory is shared.
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}
