//! The aggregator: a Kafka consumer group member that counts view events in Redis
//! and flushes them to Postgres exactly once. See [`flush`] for the protocol.

pub mod aggregator;
pub mod backfill;
pub mod batch;
pub mod consumer;
pub mod dlq;
pub mod flush;
pub mod log_check;
pub mod metrics;
pub mod partition;
pub mod pending;
pub mod retry;
pub mod settings;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sea_orm_migration::MigratorTrait;
use tokio::net::TcpListener;

use viewpipe_runtime::connect::{check_eviction_policy, check_kafka, connect_redis};
use viewpipe_runtime::{kafka, Health, Probes, Shutdown};
use viewpipe_schema::db;
use viewpipe_schema::migration::Migrator;
use viewpipe_schema::settings::SecretUrl;
use viewpipe_store::pending::{Layout, PendingStore};
use viewpipe_store::{jobs, Scope};

use crate::aggregator::{Aggregator, Parts, Tuning};
use crate::consumer::AggregatorContext;
use crate::dlq::Dlq;
use crate::log_check::LogProbe;
use crate::pending::Pending;
use crate::settings::{FlushArgs, ResetArgs, Settings};

/// How often each aggregator looks for flush requests.
const FLUSH_REQUEST_POLL: Duration = Duration::from_millis(100);

/// `aggregator migrate`: applies every pending migration.
pub async fn migrate(database_url: &SecretUrl) -> anyhow::Result<()> {
    let db = db::connect(database_url, 2).await?;
    let pending = Migrator::get_pending_migrations(&db).await?.len();
    Migrator::up(&db, None).await.context("migration failed")?;
    if pending == 0 {
        tracing::info!(database = %database_url, "schema already current; nothing to do");
    } else {
        tracing::info!(database = %database_url, applied = pending, "schema migrated");
    }
    Ok(())
}

/// `aggregator flush`: asks every running aggregator of the group to flush, waits
/// for all partitions to answer, and prints the outcome.
pub async fn request_flush(args: &FlushArgs) -> anyhow::Result<()> {
    let db = db::connect(&args.database_url, 2).await?;
    db::ensure_schema_current(&db).await?;
    let scope = Scope {
        group: args.consumer_group.clone(),
        topic: args.views_topic.clone(),
    };
    let started = std::time::Instant::now();
    let (id, seq) = jobs::request_flush(&db, &scope.group).await?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let state = jobs::wait_for_flush(&db, &scope, id, seq, timeout).await?;
    let rows = state
        .result
        .as_ref()
        .and_then(|r| r.get("flushed"))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    match state.error {
        None if state.status == "completed" => {
            println!(
                "flush job {id}: completed, {rows} rows written, {} ms",
                started.elapsed().as_millis()
            );
            Ok(())
        }
        error => anyhow::bail!(
            "flush job {id}: {}: {}",
            state.status,
            error.unwrap_or_default()
        ),
    }
}

/// `aggregator reset-pending`: deletes the deployment's pending state from Redis
/// (`--yes`), or counts what it would delete.
pub async fn reset_pending(args: &ResetArgs) -> anyhow::Result<()> {
    let conn = connect_redis(&args.redis_url).await?;
    let layout = Layout::new(&args.redis_prefix, &args.consumer_group, &args.views_topic)
        .map_err(|e| anyhow::anyhow!(e))?;
    let store = PendingStore::new(conn, layout);
    let keys = store.keys().await.context("cannot list the pending keys")?;
    if !args.yes {
        println!(
            "{} pending keys of group {:?}, topic {:?} under prefix {:?}; run again with --yes to delete them",
            keys.len(),
            args.consumer_group,
            args.views_topic,
            args.redis_prefix
        );
        return Ok(());
    }
    let deleted = store
        .delete(&keys)
        .await
        .context("cannot delete the pending keys")?;
    println!(
        "deleted {deleted} pending keys of group {:?}, topic {:?}; held partitions are claimed again within {} s",
        args.consumer_group,
        args.views_topic,
        aggregator::HOLD_RETRY.as_secs()
    );
    Ok(())
}

/// Keeps `requested` at the group's newest open flush request.
fn spawn_flush_request_watch(
    db: sea_orm::DatabaseConnection,
    group: String,
    requested: Arc<AtomicI64>,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_REQUEST_POLL);
        while !shutdown.is_triggered() {
            tick.tick().await;
            match jobs::newest_flush_request(&db, &group).await {
                Ok(seq) => requested.store(seq, Ordering::Relaxed),
                Err(e) => tracing::debug!(error = %e, "cannot read flush requests"),
            }
        }
    });
}

/// Forgets client ids past their 24 h, a bounded batch every minute (any
/// aggregator may; they do not step on each other).
fn spawn_event_id_expiry(db: sea_orm::DatabaseConnection, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        while !shutdown.is_triggered() {
            tick.tick().await;
            match viewpipe_store::event_ids::forget_expired(&db, 50_000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(forgotten = n, "expired client ids forgotten"),
                Err(e) => tracing::debug!(error = %e, "cannot forget expired client ids"),
            }
        }
    });
}

/// Runs the aggregator until `shutdown` triggers (or the consumer loop ends).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let common = &settings.common;
    let prometheus = metrics::install()?;
    let db = db::connect(&common.database_url, 8).await?;
    db::ensure_schema_current(&db).await?;
    let redis = match common.redis_url.url() {
        Some(url) => {
            let conn = connect_redis(url).await?;
            check_eviction_policy(&conn).await;
            Some(conn)
        }
        None => {
            tracing::info!(
                "REDIS_URL=none: database-only mode, counts reach Postgres once per batch"
            );
            None
        }
    };
    check_kafka(&common.kafka_brokers).await?;
    let scope = Scope {
        group: common.consumer_group.clone(),
        topic: common.views_topic.clone(),
    };
    let layout = Layout::new(&common.redis_prefix, &scope.group, &scope.topic)
        .map_err(anyhow::Error::msg)?;
    let pending = match redis.clone() {
        Some(conn) => Pending::Redis(Box::new(PendingStore::new(conn, layout))),
        None => Pending::DatabaseOnly,
    };

    let health = Health::new();
    Probes {
        db: db.clone(),
        redis,
        kafka: Probes::kafka_client(&common.kafka_brokers)?,
    }
    .spawn(health.clone(), shutdown.clone());
    let router = health.router(prometheus);
    let http_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await
    });

    let dlq = Dlq {
        producer: kafka::producer_config(&common.kafka_brokers)
            .create()
            .context("cannot create the DLQ producer")?,
        topic: common.dlq_topic.clone(),
    };
    let requested_flush = Arc::new(AtomicI64::new(0));
    spawn_flush_request_watch(
        db.clone(),
        scope.group.clone(),
        requested_flush.clone(),
        shutdown.clone(),
    );
    spawn_event_id_expiry(db.clone(), shutdown.clone());
    let session = settings.kafka_session_timeout_ms;
    let probe = LogProbe::new(
        &common.kafka_brokers,
        &common.consumer_group,
        &common.views_topic,
    )
    .context("cannot create the Kafka consumer for log checks")?;
    let aggregator = Arc::new(Aggregator::new(Parts {
        probe,
        rt: tokio::runtime::Handle::current(),
        db,
        scope,
        pending,
        dlq,
        namespaces: common.namespaces.clone(),
        shutdown: shutdown.clone(),
        health: health.clone(),
        requested_flush,
        tuning: Tuning {
            flush_interval: Duration::from_millis(settings.flush_interval_ms),
            flush_max_pending: usize::try_from(settings.flush_max_pending).unwrap_or(usize::MAX),
            revoke_deadline: Duration::from_millis(u64::from(session) / 3)
                .max(Duration::from_millis(500)),
        },
    }));
    let consumer: BaseConsumer<AggregatorContext> =
        kafka::consumer_config(&common.kafka_brokers, &common.consumer_group, session)
            .set("statistics.interval.ms", "5000")
            // Every partition starts at an explicit offset (Postgres' position). If the
            // log no longer holds it (retention ran ahead), librdkafka must not jump to
            // the log start and skip the rest: it reports, and the partition is held.
            .set("auto.offset.reset", "error")
            .create_with_context(AggregatorContext { aggregator })
            .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&common.views_topic])
        .with_context(|| format!("cannot subscribe to {}", common.views_topic))?;
    tracing::info!(
        group = %common.consumer_group,
        topic = %common.views_topic,
        database = %common.database_url,
        redis = %common.redis_url.url().map_or("none".to_owned(), ToString::to_string),
        "aggregator started"
    );

    let (loop_health, loop_shutdown) = (health.clone(), shutdown.clone());
    let consumer_thread = std::thread::Builder::new()
        .name("consumer".into())
        .spawn(move || consumer::run_loop(consumer, loop_health, loop_shutdown))?;

    shutdown.wait().await;
    health.stopping();
    let joined = tokio::task::spawn_blocking(move || consumer_thread.join()).await?;
    if joined.is_err() {
        anyhow::bail!("the consumer thread panicked");
    }
    server.await??;
    Ok(())
}
