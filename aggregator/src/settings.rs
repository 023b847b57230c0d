//! The aggregator's command line: settings as flags and environment variables.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use viewpipe_schema::settings::{CommonSettings, SecretUrl};

#[derive(Parser, Debug)]
#[command(
    name = "aggregator",
    version,
    about = "Counts view events from Kafka in Redis and flushes them to Postgres, exactly once",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Settings,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Join the consumer group and count (the default).
    Run(Box<Settings>),
    /// Create or upgrade the Postgres schema; running it twice is harmless.
    Migrate(MigrateArgs),
    /// Ask every running aggregator of the group to flush everything it has counted
    /// to Postgres, and wait until all partitions have answered.
    Flush(FlushArgs),
    /// Delete this deployment's pending counts from Redis (after Postgres went back
    /// in time; see docs/exactly-once.md). Lists what it would delete unless `--yes`.
    ResetPending(ResetArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ResetArgs {
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: SecretUrl,
    /// Prefix of the deployment's Redis keys.
    #[arg(long, env = "REDIS_PREFIX", default_value = "viewpipe")]
    pub redis_prefix: String,
    /// The aggregators' consumer group.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "viewpipe-aggregator")]
    pub consumer_group: String,
    /// The topic the aggregators consume.
    #[arg(long, env = "VIEWS_TOPIC", default_value = "views")]
    pub views_topic: String,
    /// Delete; without it, only count what would be deleted.
    #[arg(long)]
    pub yes: bool,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Args, Debug, Clone)]
pub struct FlushArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/viewpipe"
    )]
    pub database_url: SecretUrl,
    /// The aggregators' consumer group.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "viewpipe-aggregator")]
    pub consumer_group: String,
    /// The topic the aggregators consume.
    #[arg(long, env = "VIEWS_TOPIC", default_value = "views")]
    pub views_topic: String,
    /// Give up (and mark the job failed) after this many milliseconds.
    #[arg(long, default_value_t = 30000)]
    pub timeout_ms: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/viewpipe"
    )]
    pub database_url: SecretUrl,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Health and metrics listener.
    #[arg(long, env = "AGGREGATOR_ADDR", default_value = "127.0.0.1:9091")]
    pub aggregator_addr: SocketAddr,
    /// Periodic flush to Postgres, in milliseconds.
    #[arg(long, env = "FLUSH_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub flush_interval_ms: u64,
    /// Flush early once this many keys are pending.
    #[arg(long, env = "FLUSH_MAX_PENDING", default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_max_pending: u64,
    /// Kafka consumer session timeout; a dead aggregator's partitions move after it.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10000)]
    pub kafka_session_timeout_ms: u32,
}
