//! The ingest: viewpipe's HTTP API. It validates view events, publishes them to
//! Kafka and answers only after the broker acknowledged them; it also serves counts.

pub mod error;
pub mod extract;
pub mod metrics;
pub mod routes;
pub mod settings;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::net::TcpListener;

use viewpipe_runtime::connect::{check_kafka, connect_redis};
use viewpipe_runtime::{kafka, Health, Probes, Shutdown};
use viewpipe_schema::{db, Namespaces};
use viewpipe_store::pending::{Layout, PendingStore};
use viewpipe_store::read::Reader;
use viewpipe_store::Scope;

use crate::error::ApiError;
use crate::settings::Settings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub producer: FutureProducer,
    pub topic: Arc<str>,
    pub namespaces: Arc<Namespaces>,
    pub reader: Reader,
}

/// The API routes (health and metrics are merged in by [`run`]).
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/views",
            get(routes::views::get_views).post(routes::views::post_view),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Runs the ingest on `listener` until `shutdown` triggers, then drains in-flight
/// requests and flushes the producer.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let common = &settings.common;
    let prometheus = metrics::install()?;
    let db = db::connect(&common.database_url, 16).await?;
    db::ensure_schema_current(&db).await?;
    let redis = match common.redis_url.url() {
        Some(url) => Some(connect_redis(url).await?),
        None => None,
    };
    check_kafka(&common.kafka_brokers).await?;
    let layout = Layout::new(&common.redis_prefix).map_err(anyhow::Error::msg)?;
    let producer: FutureProducer = kafka::producer_config(&common.kafka_brokers)
        .create()
        .context("cannot create the Kafka producer")?;

    let health = Health::new();
    Probes {
        db: db.clone(),
        redis: redis.clone(),
        kafka: Probes::kafka_client(&common.kafka_brokers)?,
    }
    .spawn(health.clone(), shutdown.clone());
    // The HTTP server is this process's loop: keep the heartbeat fresh while it runs.
    let beat = health.clone();
    let beat_stop = shutdown.clone();
    tokio::spawn(async move {
        while !beat_stop.is_triggered() {
            beat.beat();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });

    let state = AppState {
        producer: producer.clone(),
        topic: common.views_topic.as_str().into(),
        namespaces: Arc::new(common.namespaces.clone()),
        reader: Reader::new(
            db,
            Scope {
                group: common.consumer_group.clone(),
                topic: common.views_topic.clone(),
            },
            redis.map(|conn| PendingStore::new(conn, layout)),
        ),
    };
    let app = api_router(state)
        .merge(health.router(prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(axum::middleware::from_fn(metrics::track));

    tracing::info!(
        addr = %listener.local_addr()?,
        topic = %common.views_topic,
        database = %common.database_url,
        "ingest listening"
    );
    let stop = shutdown.clone();
    let stop_health = health.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.wait().await;
            stop_health.stopping();
        })
        .await?;
    tracing::info!("draining the producer");
    let _ = tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(10)))
        .await;
    Ok(())
}
