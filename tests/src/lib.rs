//! Test harness: a throwaway stack per test, with real processes.
//!
//! Each [`Stack`] has its own broker (the dev broker in this process on a free port,
//! or a private nisshi process: see [`broker`]), its own
//! Postgres database (`vp_test_<id>`, migrated) and its own Redis key prefix, so tests
//! run side by side without seeing each other. `ingest` and `aggregator` run as real
//! child processes built by `cargo build --bins`; their logs go to
//! `target/test-logs/<id>-<name>.log`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use sea_orm_migration::MigratorTrait;
use tokio::process::{Child, Command};

use crate::broker::Broker;

pub mod broker;
pub mod chaos;
pub mod faults;
pub mod pg_server;
pub mod pgproxy;
pub mod redis_server;

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
        let base = admin_url.clone();
        let db_url = format!(
            "{}/{db_name}",
            base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b)
        );
        let db = Database::connect(&db_url).await?;
        viewpipe_schema::migration::Migrator::up(&db, None).await?;
        Ok(Self {
            redis_prefix: format!("vp_test_{id}"),
            redis_url: redis_url(),
            group: format!("vp-test-{id}"),
            id,
            broker,
            db_url,
            db,
            admin_url,
        })
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
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub async fn spawn_ingest(&self, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        let addr = free_addr();
        let mut env = self.env();
        env.push(("INGEST_ADDR".into(), addr.to_string()));
        self.spawn("ingest", addr, env, extra).await
    }

    /// Runs one of the project's binaries with `args` and this stack's environment
    /// to its end: its exit code, standard output and standard error.
    pub async fn command(
        &self,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<(i32, String, String)> {
        let out = tokio::process::Command::new(bin(name))
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

    pub async fn spawn_aggregator(&self, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
        let addr = free_addr();
        let mut env = self.env();
        env.push(("AGGREGATOR_ADDR".into(), addr.to_string()));
        self.spawn("aggregator", addr, env, extra).await
    }

    async fn spawn(
        &self,
        name: &str,
        addr: SocketAddr,
        mut env: Vec<(String, String)>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let logs = log_dir();
        let log_path = logs.join(format!("{}-{name}-{}.log", self.id, addr.port()));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin(name))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let service = Service {
            name: name.to_owned(),
            addr,
            child,
            log_path,
        };
        service.wait_ready(Duration::from_secs(30)).await?;
        Ok(service)
    }

    /// Drops the database and this stack's Redis keys.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        self.db.clone().close().await.ok();
        let admin = Database::connect(&self.admin_url).await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS vp_test_{} WITH (FORCE)",
                self.id
            ))
            .await?;
        let (conn, keys) = self.redis_keys().await?;
        conn.per_partition(&keys, false, String::clone, |pipe, key| {
            pipe.cmd("DEL").arg(key);
        })
        .await?;
        Ok(())
    }

    /// This stack with the services using the Redis (or Redis Cluster) at `url`.
    pub fn with_redis(mut self, url: &str) -> Self {
        url.clone_into(&mut self.redis_url);
        self
    }

    /// A Redis connection and every key under this stack's prefix (SCAN, so a large
    /// shared keyspace is never blocked on).
    pub async fn redis_keys(&self) -> anyhow::Result<(viewpipe_store::RedisConn, Vec<String>)> {
        let conn = viewpipe_store::RedisConn::connect(
            &self.redis_url,
            viewpipe_store::redis_conn::Timeouts::default(),
        )
        .await?;
        let pattern = format!("{}:*", self.redis_prefix);
        let keys = conn.scan(&pattern).await?;
        Ok((conn, keys))
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

/// A running `ingest` or `aggregator` process.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    pub child: Child,
    pub log_path: PathBuf,
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {within:?}; see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process with SIGKILL (no chance to flush or leave the group).
    /// The process' peak resident memory (`VmHWM`) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib)
    }

    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        signal(pid, libc::SIGTERM);
        tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {within:?} of SIGTERM", self.name))?
            .map_err(Into::into)
    }
}

#[allow(unsafe_code)]
pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we spawned; no memory is shared.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
