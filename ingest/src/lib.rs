//! The ingest: viewpipe's HTTP API. It validates view events, publishes them to
//! Kafka and answers only after the broker acknowledged them; it also serves counts.

pub mod age;
pub mod api;
pub mod error;
pub(crate) mod extract;
pub mod metrics;
pub mod openapi;
pub mod protect;
pub mod publish;
pub mod read;
pub mod routes;
pub mod serve;
pub mod settings;
pub mod visitor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::{FutureProducer, Producer};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::read::Reader;
use viewpipe_runtime::connect::{check_info_allowed, check_kafka, connect_redis};
use viewpipe_runtime::db;
use viewpipe_runtime::settings::Secret;
use viewpipe_runtime::{kafka, Health, Probes, Shutdown};
use viewpipe_schema::pending::Layout;
use viewpipe_schema::Namespaces;

use crate::read::pending::PendingReader;
use viewpipe_schema::Scope;

use crate::age::MaxEventAge;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::protect::Protect;
use crate::routes::{admin, badge, batch, counts, pixel, script, series, views};
use crate::settings::Settings;
use crate::visitor::{VisitorHash, Visitors};

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
    /// Keys, rate limits and the crawler filter (all off by default).
    pub protect: Arc<Protect>,
    /// Cookieless visitor ids (`None`: `VISITOR_HASH=off`).
    pub visitors: Option<Arc<Visitors>>,
    /// How old an `occurredAt` the API takes (`MAX_EVENT_AGE`).
    pub max_event_age: MaxEventAge,
}

/// Every API route, each with its description.
fn routes() -> OpenApiRouter<AppState> {
    let batch = OpenApiRouter::new()
        .routes(routes!(batch::post_batch))
        .layer(DefaultBodyLimit::max(batch::MAX_BODY));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(views::get_views, views::post_view))
        .routes(routes!(counts::post_counts))
        .routes(routes!(badge::get_badge))
        .routes(routes!(series::get_daily))
        .routes(routes!(series::get_top))
        .routes(routes!(admin::post_flush))
        .routes(routes!(admin::get_job))
        .routes(routes!(pixel::get_pixel))
        .routes(routes!(script::get_script))
        .merge(batch)
}

/// The OpenAPI document an ingest allowing `namespaces` and running without API
/// protection, with the default `MAX_EVENT_AGE`, serves: every route's description
/// with the rules its handler enforces ([`api_router`] serves each ingest's own, its
/// protection included).
pub fn document(namespaces: &Namespaces) -> serde_json::Value {
    stated(
        routes().split_for_parts().1,
        namespaces,
        &Protect::default(),
        MaxEventAge::default(),
    )
}

fn stated(
    api: utoipa::openapi::OpenApi,
    namespaces: &Namespaces,
    protect: &Protect,
    max_event_age: MaxEventAge,
) -> serde_json::Value {
    // The derived document always serialises: it holds only strings, maps and
    // numbers.
    let mut api = serde_json::to_value(api).unwrap_or_default();
    openapi::rules::apply(&mut api, namespaces, max_event_age);
    openapi::protect::apply(&mut api, protect);
    api
}

/// The API routes and their OpenAPI document, served at `/openapi.json` (health and
/// metrics are merged in by [`App::build`]).
pub(crate) fn api_router(state: AppState) -> Router {
    let (router, api) = routes().split_for_parts();
    let document: Arc<str> = stated(api, &state.namespaces, &state.protect, state.max_event_age)
        .to_string()
        .into();
    let router = router.with_state(state);
    router.route(
        "/openapi.json",
        get(move || async move {
            (
                [(header::CONTENT_TYPE, "application/json")],
                document.to_string(),
            )
        }),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// On the API port while `METRICS_ADDR` serves `/metrics`: 404 for it.
async fn hide_metrics(req: Request, next: Next) -> Response {
    if req.uri().path() == "/metrics" {
        return ApiError::NotFound.into_response();
    }
    next.run(req).await
}

/// An ingest connected to Postgres, Redis and Kafka and bound to its address, not
/// yet serving: [`App::build`], then [`App::run_until_stopped`]. The binary runs one;
/// tests build several in one process, each on its own port.
pub struct App {
    listener: TcpListener,
    router: Router,
    /// `METRICS_ADDR`'s listener and its routes (`/metrics`, `/healthz`, `/readyz`).
    metrics: Option<(TcpListener, Router)>,
    limits: serve::Limits,
    producer: FutureProducer,
    health: Health,
    probes: Probes,
    shutdown: Shutdown,
}

impl App {
    /// Connects (failing fast with the address that does not answer), checks the
    /// schema and binds `INGEST_ADDR` (port 0 picks a free one; see [`App::port`]).
    /// Metrics go to `prometheus`, the process's recorder: the binary installs one
    /// with [`metrics::install`]; services built in one process share it.
    pub async fn build(
        settings: Settings,
        prometheus: PrometheusHandle,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let common = &settings.common;
        let protect = Protect::build(&settings.protect, &settings.namespaces)?;
        metrics::describe();
        let db = db::connect_current(&common.database_url, 16).await?;
        let redis = match common.redis_url.url() {
            Some(url) => {
                let conn = connect_redis(url, common.redis_tls_ca.as_deref()).await?;
                check_info_allowed(&conn).await?;
                Some(conn)
            }
            None => None,
        };
        check_kafka(&common.kafka).await?;
        let layout = Layout::new(
            &common.redis_prefix,
            &common.consumer_group,
            &common.views_topic,
        )?;
        let producer: FutureProducer = kafka::producer_config(&common.kafka)
            .create()
            .context("cannot create the Kafka producer")?;
        let listener = TcpListener::bind(settings.ingest_addr)
            .await
            .with_context(|| format!("cannot listen on INGEST_ADDR {}", settings.ingest_addr))?;
        let metrics_listener = match protect.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?,
            ),
            None => None,
        };
        let visitor_ids = settings.visitor_hash == VisitorHash::On;
        protect.log(visitor_ids);
        if protect.bots.is_some() {
            if let Namespaces::List(list) = &settings.namespaces {
                for ns in list {
                    protect::count_bot_views(&settings.namespaces, ns, 0);
                }
            }
        }

        let health = Health::new();
        let probes = Probes {
            db: db.clone(),
            redis: redis.clone(),
            kafka: Probes::kafka_client(&common.kafka)?,
        };
        let scope = Scope {
            group: common.consumer_group.clone(),
            topic: common.views_topic.clone(),
        };
        let reader = Reader::new(
            db.clone(),
            scope.clone(),
            redis.map(|conn| PendingReader::new(conn, layout)),
        );
        reader.topic_partitions().watch(
            producer.clone(),
            common.views_topic.clone(),
            shutdown.clone(),
        );
        let state = AppState {
            producer: producer.clone(),
            topic: common.views_topic.as_str().into(),
            namespaces: Arc::new(settings.namespaces.clone()),
            reader,
            visitors: visitor_ids.then(|| Arc::new(Visitors::new(db.clone(), health.clone()))),
            db,
            scope,
            health: health.clone(),
            admin_token: settings.admin_token.clone().map(Arc::new),
            protect: Arc::new(protect),
            max_event_age: settings.max_event_age,
        };
        if state.admin_token.is_none() {
            tracing::info!("ADMIN_TOKEN is not set: admin endpoints refuse every request");
        }
        let keys = state.protect.write_keys.is_some() || state.protect.read_key.is_some();
        let (public_health, metrics) = match metrics_listener {
            None => (health.router(prometheus), None),
            Some(listener) => {
                let served = health
                    .router(prometheus.clone())
                    .fallback(not_found)
                    .method_not_allowed_fallback(method_not_allowed)
                    .layer(axum::middleware::from_fn(metrics::track))
                    .layer(axum::middleware::map_response(
                        viewpipe_runtime::health::nosniff,
                    ));
                let public = health
                    .router(prometheus)
                    .layer(axum::middleware::from_fn(hide_metrics));
                (public, Some((listener, served)))
            }
        };
        let mut router = api_router(state)
            .merge(public_health)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(extract::MAX_BODY))
            .layer(axum::middleware::from_fn(metrics::track));
        if let Some(cors) = settings.cors_origins.layer() {
            // Browsers may send the key header only if the preflight allows it.
            let cors = if keys {
                cors.allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    protect::KEY_HEADER,
                ])
            } else {
                cors
            };
            router = router.layer(cors);
        }
        let router = router.layer(axum::middleware::map_response(
            viewpipe_runtime::health::nosniff,
        ));
        tracing::info!(
            addr = %listener.local_addr()?,
            metrics_addr = ?metrics.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            topic = %common.views_topic,
            database = %common.database_url,
            visitor_hash = ?settings.visitor_hash,
            "ingest listening"
        );
        Ok(Self {
            listener,
            router,
            metrics,
            limits: settings.limits(),
            producer,
            health,
            probes,
            shutdown,
        })
    }

    /// The address the API is served on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The port the API is served on (the one chosen when `INGEST_ADDR` named port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().map_or(0, |a| a.port())
    }

    /// The address `/metrics` is served on when `METRICS_ADDR` is set (with the port
    /// chosen when it named port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until the shutdown token triggers, then drains in-flight requests and
    /// flushes the producer.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            metrics,
            limits,
            producer,
            health,
            probes,
            shutdown,
        } = self;
        probes.spawn(health.clone(), shutdown.clone());
        // The HTTP server is this process's loop: keep the heartbeat fresh while it runs.
        let beat = health.clone();
        let beat_stop = shutdown.clone();
        tokio::spawn(async move {
            while !beat_stop.is_triggered() {
                beat.beat();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let stop = shutdown.clone();
        // The peer's address is the client's, for RATE_LIMIT_PER_ADDR.
        let api = serve::serve(listener, router, limits, async move {
            shutdown.wait().await;
            health.stopping();
        });
        let metrics = async move {
            if let Some((listener, router)) = metrics {
                serve::serve(listener, router, limits, async move { stop.wait().await }).await;
            }
        };
        tokio::join!(api, metrics);
        tracing::info!("draining the producer");
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        Ok(())
    }
}
