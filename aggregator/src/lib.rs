//! The aggregator: a Kafka consumer group member that counts view events in Redis
//! and flushes them to Postgres exactly once. See [`flush`] for the protocol.

pub mod aggregator;
pub mod backfill;
pub mod batch;
pub mod consumer;
pub mod dlq;
pub mod event_ids;
pub mod flush;
pub mod log_check;
pub mod metrics;
pub mod partition;
pub mod protocol;
pub mod retention;
pub mod retry;
pub mod settings;
pub mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use viewpipe_runtime::connect::{
    check_eviction_policy, check_info_allowed, check_kafka, connect_redis,
};
use viewpipe_runtime::db;
use viewpipe_runtime::settings::SecretUrl;
use viewpipe_runtime::{kafka, Health, Probes, Shutdown};
use viewpipe_schema::pending::Layout;
use viewpipe_schema::version::{self, Migrated};

use crate::store::pending::PendingStore;
use viewpipe_runtime::jobs;
use viewpipe_schema::Scope;

use crate::aggregator::{Aggregator, Parts, Tuning};
use crate::consumer::AggregatorContext;
use crate::dlq::Dlq;
use crate::log_check::LogProbe;
use crate::settings::{FlushArgs, ResetArgs, RetentionSettings, Settings};
use crate::store::pending::Pending;

/// How often each aggregator looks for flush requests.
const FLUSH_REQUEST_POLL: Duration = Duration::from_millis(100);

/// `aggregator migrate`: applies every pending migration.
pub async fn migrate(database_url: &SecretUrl) -> anyhow::Result<()> {
    let db = db::connect(database_url, 2).await?;
    match version::migrate(&db).await.context("migration failed")? {
        Migrated::Applied(applied) => {
            tracing::info!(database = %database_url, applied = applied.len(), "schema migrated");
        }
        Migrated::Nothing { newer } if newer.is_empty() => {
            tracing::info!(database = %database_url, "schema already current; nothing to do");
        }
        Migrated::Nothing { newer } => tracing::info!(
            database = %database_url,
            newer = %newer.join(", "),
            "the schema is ahead of this build by additive migrations; nothing to do"
        ),
    }
    Ok(())
}

/// `aggregator flush`: asks every running aggregator of the group to flush, waits
/// for all partitions to answer, and prints the outcome.
pub async fn request_flush(args: &FlushArgs) -> anyhow::Result<()> {
    let db = db::connect_current(&args.database_url, 2).await?;
    let scope = Scope {
        group: args.consumer_group.clone(),
        topic: args.views_topic.clone(),
    };
    let started = std::time::Instant::now();
    let (id, seq) = jobs::request_flush(&db, &scope.group).await?;
    let report = jobs::wait_for_flush(&db, &scope, id, seq, args.timeout).await?;
    if !report.is_completed() {
        anyhow::bail!(
            "flush job {id}: {}: {}",
            report.status,
            report.error.unwrap_or_default()
        );
    }
    println!(
        "flush job {id}: completed, {} rows written, {} ms",
        report.flushed,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// `aggregator reset-pending`: deletes the deployment's pending state from Redis
/// (`--yes`), or counts what it would delete.
pub async fn reset_pending(args: &ResetArgs) -> anyhow::Result<()> {
    let conn = connect_redis(&args.redis_url, args.redis_tls_ca.as_deref()).await?;
    let layout = Layout::new(&args.redis_prefix, &args.consumer_group, &args.views_topic)?;
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
            let newest = jobs::newest_flush_request(&db, &group);
            match viewpipe_runtime::deadline::within(viewpipe_runtime::deadline::ROUND_TRIP, newest)
                .await
            {
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
            let forget = event_ids::forget_expired(&db, 50_000);
            // Far longer than a batch takes; only a silent connection runs into it.
            match viewpipe_runtime::deadline::within(Duration::from_secs(60), forget).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(forgotten = n, "expired client ids forgotten"),
                Err(e) => tracing::debug!(error = %e, "cannot forget expired client ids"),
            }
        }
    });
}

/// An aggregator connected to Postgres, Redis and Kafka, subscribed to the views
/// topic and bound to its health address, not yet consuming: [`App::build`], then
/// [`App::run_until_stopped`].
pub struct App {
    listener: TcpListener,
    router: axum::Router,
    consumer: BaseConsumer<AggregatorContext>,
    health: Health,
    probes: Probes,
    db: DatabaseConnection,
    group: String,
    requested_flush: Arc<AtomicI64>,
    retention: RetentionSettings,
    shutdown: Shutdown,
}

impl App {
    /// Connects (failing fast with the address that does not answer), checks the
    /// schema, subscribes and binds `AGGREGATOR_ADDR` (port 0 picks a free one).
    /// Metrics go to `prometheus`, the process's recorder (see
    /// [`metrics::install`]).
    pub async fn build(
        settings: Settings,
        prometheus: PrometheusHandle,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let common = &settings.common;
        metrics::describe();
        let db = db::connect_current(&common.database_url, 8).await?;
        let redis = match common.redis_url.url() {
            Some(url) => {
                let conn = connect_redis(url, common.redis_tls_ca.as_deref()).await?;
                check_eviction_policy(&conn).await;
                check_info_allowed(&conn).await?;
                Some(conn)
            }
            None => {
                tracing::info!(
                    "REDIS_URL=none: database-only mode, counts reach Postgres once per batch"
                );
                None
            }
        };
        check_kafka(&common.kafka).await?;
        let scope = Scope {
            group: common.consumer_group.clone(),
            topic: common.views_topic.clone(),
        };
        let layout = Layout::new(&common.redis_prefix, &scope.group, &scope.topic)?;
        let pending = match redis.clone() {
            Some(conn) => Pending::Redis(Box::new(PendingStore::new(conn, layout))),
            None => Pending::DatabaseOnly,
        };
        let listener = TcpListener::bind(settings.aggregator_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on AGGREGATOR_ADDR {}",
                    settings.aggregator_addr
                )
            })?;

        let health = Health::new();
        let probes = Probes {
            db: db.clone(),
            redis,
            kafka: Probes::kafka_client(&common.kafka)?,
        };
        let dlq = Dlq {
            producer: kafka::producer_config(&common.kafka)
                .create()
                .context("cannot create the DLQ producer")?,
            topic: common.dlq_topic.clone(),
        };
        let requested_flush = Arc::new(AtomicI64::new(0));
        let session = settings.kafka_session_timeout;
        let probe = LogProbe::new(&common.kafka, &common.consumer_group, &common.views_topic)
            .context("cannot create the Kafka consumer for log checks")?;
        let aggregator = Arc::new(Aggregator::new(Parts {
            probe,
            rt: tokio::runtime::Handle::current(),
            db: db.clone(),
            scope,
            pending,
            dlq,
            shutdown: shutdown.clone(),
            health: health.clone(),
            requested_flush: requested_flush.clone(),
            tuning: Tuning {
                flush_interval: settings.flush_interval,
                flush_max_pending: usize::try_from(settings.flush_max_pending)
                    .unwrap_or(usize::MAX),
                revoke_deadline: (session / 3).max(Duration::from_millis(500)),
            },
        }));
        let consumer: BaseConsumer<AggregatorContext> =
            kafka::consumer_config(&common.kafka, &common.consumer_group, session)
                .set("statistics.interval.ms", "5000")
                // Every partition starts at an explicit offset (Postgres' position). If
                // the log no longer holds it (retention ran ahead), librdkafka must not
                // jump to the log start and skip the rest: it reports, and the
                // partition is held.
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
            addr = %listener.local_addr()?,
            "aggregator started"
        );
        Ok(Self {
            listener,
            router: health.router(prometheus),
            consumer,
            health,
            probes,
            db,
            group: common.consumer_group.clone(),
            requested_flush,
            retention: settings.retention,
            shutdown,
        })
    }

    /// The address `/healthz`, `/readyz` and `/metrics` are served on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The port of [`App::local_addr`].
    pub fn port(&self) -> u16 {
        self.local_addr().map_or(0, |a| a.port())
    }

    /// Consumes and flushes until the shutdown token triggers (or the consumer loop
    /// ends), then hands its partitions back (see [`consumer::run_loop`]).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            consumer,
            health,
            probes,
            db,
            group,
            requested_flush,
            retention,
            shutdown,
        } = self;
        probes.spawn(health.clone(), shutdown.clone());
        let http_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_shutdown.wait().await })
                .await
        });
        spawn_flush_request_watch(db.clone(), group, requested_flush, shutdown.clone());
        spawn_event_id_expiry(db.clone(), shutdown.clone());
        let pruner = retention::spawn(db, retention, shutdown.clone());

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
        // It stops between batches; a batch cut short rolls back with its session.
        let _ = tokio::time::timeout(Duration::from_secs(5), pruner).await;
        server.await??;
        Ok(())
    }
}
