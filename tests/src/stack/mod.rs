//! [`Stack`]: one test's broker, database and Redis prefix, and the services it
//! starts on them.

use std::time::Duration;

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::process::Command;

use crate::broker::Broker;
use crate::{admin_url, bin, redis_url, Kind, Service, PARTITIONS};

mod data;

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

    /// This stack's environment with `extra` on top. A name no viewpipe binary reads
    /// fails the test at once: a misspelt override would otherwise change nothing,
    /// and the test could pass for the wrong reason.
    fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        for (name, _) in extra {
            assert!(
                is_setting(name),
                "{name:?} is not a setting of the ingest or the aggregator (see their --help)"
            );
        }
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
}

/// Whether a viewpipe binary (any of its commands) reads the environment variable
/// `name`, or it is `RUST_LOG`.
fn is_setting(name: &str) -> bool {
    static KNOWN: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    fn collect(command: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            collect(sub, out);
        }
    }
    let known = KNOWN.get_or_init(|| {
        let mut known = std::collections::BTreeSet::from(["RUST_LOG".to_owned()]);
        collect(
            &<ingest::settings::Cli as clap::CommandFactory>::command(),
            &mut known,
        );
        collect(
            &<aggregator::settings::Cli as clap::CommandFactory>::command(),
            &mut known,
        );
        known
    });
    known.contains(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn overrides_must_name_a_setting() {
        assert!(super::is_setting("FLUSH_INTERVAL_MS"));
        assert!(super::is_setting("BATCH_SIZE") || super::is_setting("NAMESPACES"));
        assert!(!super::is_setting("FLUSH_INTERVALL_MS"));
    }
}
