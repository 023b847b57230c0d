//! The aggregator's command line: settings as flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::backfill::Month;
use viewpipe_runtime::kafka::KafkaSettings;
use viewpipe_runtime::settings::{millis, parse_duration, CommonSettings, SecretParser, SecretUrl};
use viewpipe_runtime::telemetry::LogFormat;

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
    /// Rebuild whole months from the replay topic: each month's daily rows become
    /// exactly the replay's views of it, and totals move by the difference. One
    /// worker per month under a Postgres advisory lock; see docs/backfill.md. Exits 0
    /// when every month was rebuilt, 2 when some were skipped (locked), 1 when some
    /// were refused or failed.
    Backfill(Box<BackfillArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct BackfillArgs {
    /// First month to rebuild, YYYY-MM.
    #[arg(long, required_unless_present = "locks")]
    pub from: Option<Month>,
    /// Last month to rebuild, YYYY-MM (included).
    #[arg(long, required_unless_present = "locks")]
    pub to: Option<Month>,
    /// The replay topic to read.
    #[arg(long, env = "REPLAY_TOPIC", default_value = "views.replay")]
    pub topic: String,
    /// How long to wait for a month another backfill holds before skipping it
    /// (e.g. 500ms, 5s, 2m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Months rebuilt at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub workers: u16,
    /// Also rebuild the current month (or later ones), whose views still arrive live;
    /// see docs/backfill.md for what that drops.
    #[arg(long)]
    pub force: bool,
    /// Only list the months whose backfill locks are held, and by which backend.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub locks: bool,
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_parser = SecretParser::<SecretUrl>::new(),
        default_value = "postgres://postgres@127.0.0.1:5432/viewpipe"
    )]
    pub database_url: SecretUrl,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// `FLUSH_INTERVAL_MS`: at least 10 ms.
fn flush_interval(s: &str) -> Result<Duration, String> {
    let interval = millis(s)?;
    if interval < Duration::from_millis(10) {
        return Err("must be at least 10 (milliseconds)".to_owned());
    }
    Ok(interval)
}

#[derive(Args, Debug, Clone)]
pub struct ResetArgs {
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        value_parser = SecretParser::<SecretUrl>::new(),
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: SecretUrl,
    /// PEM file of the CA certificates that sign the Redis servers' certificates, for
    /// `rediss://` URLs.
    #[arg(long, env = "REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,
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
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct FlushArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_parser = SecretParser::<SecretUrl>::new(),
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
    #[arg(long = "timeout-ms", default_value = "30000", value_parser = millis)]
    pub timeout: Duration,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_parser = SecretParser::<SecretUrl>::new(),
        default_value = "postgres://postgres@127.0.0.1:5432/viewpipe"
    )]
    pub database_url: SecretUrl,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// Health and metrics listener.
    #[arg(long, env = "AGGREGATOR_ADDR", default_value = "127.0.0.1:9091")]
    pub aggregator_addr: SocketAddr,
    /// Periodic flush to Postgres, in milliseconds.
    #[arg(long = "flush-interval-ms", env = "FLUSH_INTERVAL_MS", default_value = "5000", value_parser = flush_interval)]
    pub flush_interval: Duration,
    /// Flush early once this many keys are pending.
    #[arg(long, env = "FLUSH_MAX_PENDING", default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_max_pending: u64,
    /// Kafka consumer session timeout; a dead aggregator's partitions move after it.
    #[arg(long = "kafka-session-timeout-ms", env = "KAFKA_SESSION_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub kafka_session_timeout: Duration,
    #[command(flatten)]
    pub retention: RetentionSettings,
}

/// What the aggregators delete from Postgres, and how often they look. One
/// aggregator of the group prunes at a time, in small batches beside the flushes;
/// see docs/privacy.md.
#[derive(Args, Debug, Clone)]
pub struct RetentionSettings {
    /// Days of daily rows to keep (views and unique visitors per key and UTC day):
    /// rows of days more than this many days before today (UTC) are deleted. 0 keeps
    /// them forever, so that every total stays the sum of its key's daily counts.
    /// Totals are never deleted. A backfill refuses months whose rows were deleted.
    #[arg(long, env = "RETAIN_DAILY_DAYS", default_value = "0", value_parser = days)]
    pub retain_daily_days: u32,
    /// Delete finished (completed or failed) flush and backfill jobs this many days
    /// after they finished; queued and running jobs are never deleted. 0 keeps them
    /// forever.
    #[arg(long, env = "RETAIN_JOBS_DAYS", default_value = "30", value_parser = days)]
    pub retain_jobs_days: u32,
    /// How often to prune (e.g. 30s, 15m, 1h). Each run also deletes the visitor
    /// salts of days before yesterday, whatever the settings above.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "1h", value_parser = retention_interval)]
    pub retention_interval: Duration,
}

/// Longest retention accepted, in days (a century): beyond it a value is a typo.
const MAX_RETAIN_DAYS: u32 = 36_525;

/// `RETAIN_*_DAYS`: a whole number of days, 0 meaning forever.
fn days(s: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "{s:?} is not a number of days: expected a whole number from 0 (keep forever) to {MAX_RETAIN_DAYS}"
        )
    };
    let n: u32 = s.trim().parse().map_err(|_| bad())?;
    if n > MAX_RETAIN_DAYS {
        return Err(bad());
    }
    Ok(n)
}

/// `RETENTION_INTERVAL`: `500ms`, `30s`, `15m` or `1h`; from 100 ms to 24 h.
fn retention_interval(s: &str) -> Result<Duration, String> {
    let interval = match s.trim().strip_suffix('h') {
        Some(hours) => hours
            .parse::<u64>()
            .map(|h| Duration::from_secs(h * 3600))
            .map_err(|_| format!("{s:?} is not a duration: expected e.g. 30s, 15m or 1h"))?,
        None => parse_duration(s.trim())
            .map_err(|_| format!("{s:?} is not a duration: expected e.g. 30s, 15m or 1h"))?,
    };
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?}: must be from 100ms to 24h"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Settings, clap::Error> {
        let argv = std::iter::once("aggregator").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.run)
    }

    #[test]
    fn retention_defaults_keep_daily_rows_and_a_month_of_jobs() {
        let r = run(&[]).expect("defaults").retention;
        assert_eq!(r.retain_daily_days, 0, "daily rows forever by default");
        assert_eq!(r.retain_jobs_days, 30);
        assert_eq!(r.retention_interval, Duration::from_secs(3600));
        let r = run(&[
            "--retain-daily-days=400",
            "--retain-jobs-days=0",
            "--retention-interval=250ms",
        ])
        .expect("set")
        .retention;
        assert_eq!(
            (r.retain_daily_days, r.retain_jobs_days),
            (400, 0),
            "0 keeps jobs forever"
        );
        assert_eq!(r.retention_interval, Duration::from_millis(250));
        let r = run(&["--retention-interval=2h"]).expect("hours").retention;
        assert_eq!(r.retention_interval, Duration::from_secs(7200));
    }

    #[test]
    fn nonsense_retention_is_refused_naming_the_setting() {
        for (flag, value, says) in [
            ("--retain-daily-days", "-1", "whole number from 0"),
            ("--retain-daily-days", "7d", "not a number of days"),
            ("--retain-jobs-days", "99999", "to 36525"),
            ("--retention-interval", "0s", "from 100ms to 24h"),
            ("--retention-interval", "3d", "not a duration"),
            ("--retention-interval", "25h", "from 100ms to 24h"),
        ] {
            let err = run(&[&format!("{flag}={value}")])
                .expect_err(value)
                .to_string();
            assert!(
                err.contains(flag) && err.contains(says),
                "{flag}={value}: {err}"
            );
        }
    }
}
