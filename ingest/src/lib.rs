//! The ingest: viewpipe's HTTP API. It validates view events, publishes them to
//! Kafka and answers only after the broker acknowledged them; it also serves counts.

pub mod api;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod publish;
pub mod routes;
pub mod settings;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::routing::get;
use axum::Router;
use rdkafka::producer::{FutureProducer, Producer};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use viewpipe_runtime::connect::{check_kafka, connect_redis};
use viewpipe_runtime::{kafka, Health, Probes, Shutdown};
use viewpipe_schema::settings::Secret;
use viewpipe_schema::{db, Namespaces};
use viewpipe_store::pending::{Layout, PendingStore};
use viewpipe_store::read::Reader;
use viewpipe_store::Scope;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::routes::{admin, batch, series, views};
use crate::settings::Settings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub producer: FutureProducer,
    pub topic: Arc<str>,
    pub namespaces: Arc<Namespaces>,
    pub reader: Reader,
    pub db: DatabaseConnection,
    pub scope: Scope,
    pub health: Health,
    /// `None`: admin endpoints refuse everyone.
    pub admin_token: Option<Arc<Secret>>,
}

/// The API routes and their OpenAPI document, served at `/openapi.json` (health and
/// metrics are merged in by [`run`]).
pub fn api_router(state: AppState) -> anyhow::Result<Router> {
    let batch = OpenApiRouter::new()
        .routes(routes!(batch::post_batch))
        .layer(DefaultBodyLimit::max(batch::MAX_BODY));
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(views::get_views, views::post_view))
        .routes(routes!(series::get_daily))
        .routes(routes!(series::get_top))
        .routes(routes!(admin::post_flush))
        .routes(routes!(admin::get_job))
        .merge(batch)
        .with_state(state)
        .split_for_parts();
    let document: Arc<str> = api.to_json()?.into();
    Ok(router.route(
        "/openapi.json",
        get(move || async move {
            (
                [(header::CONTENT_TYPE, "application/json")],
                document.to_string(),
            )
        }),
    ))
}

/// The CORS policy for `CORS_ORIGINS`: empty allows no browser origin, `*` any, else
/// a comma-separated list of origins.
pub fn cors(origins: &str) -> anyhow::Result<Option<CorsLayer>> {
    let origins = origins.trim();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| {
                HeaderValue::from_str(o)
                    .with_context(|| format!("CORS_ORIGINS: {o:?} is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .max_age(std::time::Duration::from_secs(600)),
    ))
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
    let cors = cors(&settings.cors_origins)?;
    let prometheus = metrics::install()?;
    let db = db::connect(&common.database_url, 16).await?;
    db::ensure_schema_current(&db).await?;
    let redis = match common.redis_url.url() {
        Some(url) => Some(connect_redis(url).await?),
        None => None,
    };
    check_kafka(&common.kafka_brokers).await?;
    let layout = Layout::new(
        &common.redis_prefix,
        &common.consumer_group,
        &common.views_topic,
    )
    .map_err(anyhow::Error::msg)?;
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

    let scope = Scope {
        group: common.consumer_group.clone(),
        topic: common.views_topic.clone(),
    };
    let state = AppState {
        producer: producer.clone(),
        topic: common.views_topic.as_str().into(),
        namespaces: Arc::new(common.namespaces.clone()),
        reader: Reader::new(
            db.clone(),
            scope.clone(),
            redis.map(|conn| PendingStore::new(conn, layout)),
        ),
        db,
        scope,
        health: health.clone(),
        admin_token: settings.admin_token.clone().map(Arc::new),
    };
    if state.admin_token.is_none() {
        tracing::info!("ADMIN_TOKEN is not set: admin endpoints refuse every request");
    }
    let mut app = api_router(state)?
        .merge(health.router(prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(axum::middleware::from_fn(metrics::track));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }

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
