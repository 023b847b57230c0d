//! Liveness, readiness and `/metrics`.
//!
//! Liveness: the service's main loop beats a heartbeat; `/healthz` is 200 while the
//! last beat is recent. Readiness: a background task probes each dependency once a
//! second; `/readyz` is 200 only while all answered, the service reports no fault of
//! its own (a store that went back in time), and shutdown has not begun.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::shutdown::Shutdown;

/// Gauge: 1 while `/readyz` would answer 200, else 0 (set at every scrape).
pub(crate) const READY: &str = "viewpipe_ready";
/// Gauge by `dependency` (`kafka`, `postgres`, `redis`): 1 when its last probe
/// answered, else 0.
pub(crate) const DEPENDENCY_UP: &str = "viewpipe_dependency_up";

/// Describes the readiness gauges (after the service installed its recorder).
pub fn describe_metrics() {
    metrics::describe_gauge!(READY, "1 while /readyz answers 200, else 0");
    metrics::describe_gauge!(
        DEPENDENCY_UP,
        "1 when the dependency answered its last readiness probe, else 0"
    );
    metrics::gauge!(READY).set(0.0);
    metrics::describe_counter!(
        crate::deadline::TIMEOUTS,
        "Store round trips that got no answer within their deadline (handled as a cut connection)"
    );
    metrics::counter!(crate::deadline::TIMEOUTS, "store" => "postgres").increment(0);
}

/// What a service needs to be ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dependency {
    Kafka,
    Postgres,
    Redis,
}

impl Dependency {
    /// Its name in `/readyz` and in the `dependency` label of [`DEPENDENCY_UP`].
    pub fn label(self) -> &'static str {
        match self {
            Dependency::Kafka => "kafka",
            Dependency::Postgres => "postgres",
            Dependency::Redis => "redis",
        }
    }
}

/// What `/healthz` and `/readyz` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// `/healthz`: the service's loops are alive.
    Ok,
    /// `/healthz`: a loop has not made progress for a minute.
    Stalled,
    /// `/readyz`: every dependency answers and no fault is reported.
    Ready,
    /// `/readyz`: see `failing`.
    NotReady,
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    pub status: HealthStatus,
    /// What is wrong: dependencies not answering (`kafka`, `postgres`, `redis`),
    /// faults the service found itself (`name: detail`), `shutting down`.
    pub failing: Vec<String>,
}

/// A loop that has not beaten for this long is reported dead.
const STALE_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    heartbeat: AtomicU64,
    ready: AtomicBool,
    stopping: AtomicBool,
    failing: std::sync::Mutex<Vec<Dependency>>,
    /// Conditions the service found itself, by name, with what to tell the operator
    /// and, for one reported for a while, when it lapses.
    faults: std::sync::Mutex<std::collections::BTreeMap<String, Fault>>,
}

struct Fault {
    detail: String,
    until: Option<Instant>,
}

impl Fault {
    fn stands(&self) -> bool {
        self.until.is_none_or(|until| Instant::now() < until)
    }
}

/// Shared health state of one process.
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Health {
    pub fn new() -> Self {
        let health = Self::default();
        health.beat();
        health
    }

    /// Called by the main loop on every turn.
    pub fn beat(&self) {
        self.0.heartbeat.store(now_secs(), Ordering::Relaxed);
    }

    pub(crate) fn is_alive(&self) -> bool {
        now_secs().saturating_sub(self.0.heartbeat.load(Ordering::Relaxed)) < STALE_AFTER.as_secs()
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed)
            && !self.0.stopping.load(Ordering::Relaxed)
            && self
                .0
                .faults
                .lock()
                .map(|f| !f.values().any(Fault::stands))
                .unwrap_or(true)
    }

    /// Reports (`Some(detail)`) or clears (`None`) a fault the service found itself;
    /// `/readyz` is 503 and names it while any is reported.
    pub fn set_fault(&self, name: &str, detail: Option<String>) {
        if let Ok(mut faults) = self.0.faults.lock() {
            match detail {
                Some(detail) => faults.insert(
                    name.to_owned(),
                    Fault {
                        detail,
                        until: None,
                    },
                ),
                None => faults.remove(name),
            };
        }
    }

    /// Reports a fault that lapses by itself after `lasting` unless reported again:
    /// one seen in passing (a store that left a request unanswered) rather than a
    /// state the service will clear.
    pub fn set_fault_for(&self, name: &str, detail: String, lasting: Duration) {
        if let Ok(mut faults) = self.0.faults.lock() {
            let until = Some(Instant::now() + lasting);
            faults.insert(name.to_owned(), Fault { detail, until });
        }
    }

    /// Readiness goes 503 first thing at shutdown.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    fn set_probe_result(&self, failing: Vec<Dependency>) {
        self.0.ready.store(failing.is_empty(), Ordering::Relaxed);
        if let Ok(mut f) = self.0.failing.lock() {
            *f = failing;
        }
    }

    /// True while the last probe found `dependency` not answering.
    pub fn is_down(&self, dependency: Dependency) -> bool {
        self.0
            .failing
            .lock()
            .map(|f| f.contains(&dependency))
            .unwrap_or(false)
    }

    fn failing(&self) -> Vec<String> {
        let mut failing: Vec<String> = self
            .0
            .failing
            .lock()
            .map(|f| f.iter().map(|d| d.label().to_owned()).collect())
            .unwrap_or_default();
        if let Ok(faults) = self.0.faults.lock() {
            failing.extend(
                faults
                    .iter()
                    .filter(|(_, fault)| fault.stands())
                    .map(|(name, fault)| format!("{name}: {}", fault.detail)),
            );
        }
        if self.0.stopping.load(Ordering::Relaxed) {
            failing.push("shutting down".to_owned());
        }
        failing
    }

    /// `/healthz`, `/readyz` and `/metrics`, every answer with `nosniff`.
    pub fn router(&self, metrics: PrometheusHandle) -> Router {
        let live = self.clone();
        let ready = self.clone();
        let scraped = self.clone();
        Router::new()
            .route(
                "/healthz",
                get(move || async move {
                    if live.is_alive() {
                        (StatusCode::OK, body(HealthStatus::Ok, Vec::new()))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            body(HealthStatus::Stalled, Vec::new()),
                        )
                    }
                }),
            )
            .route(
                "/readyz",
                get(move || async move {
                    if ready.is_ready() {
                        (StatusCode::OK, body(HealthStatus::Ready, Vec::new()))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            body(HealthStatus::NotReady, ready.failing()),
                        )
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || async move {
                    metrics::gauge!(READY).set(if scraped.is_ready() { 1.0 } else { 0.0 });
                    metrics.render()
                }),
            )
            .layer(axum::middleware::map_response(nosniff))
    }
}

/// Tells browsers not to guess an answer's type from its content (a
/// `map_response` layer; both services put it on every answer).
pub async fn nosniff(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    response
}

fn body(status: HealthStatus, failing: Vec<String>) -> Json<HealthBody> {
    Json(HealthBody { status, failing })
}

/// The dependencies a process needs to be ready.
pub struct Probes {
    pub db: DatabaseConnection,
    pub redis: Option<crate::redis_conn::RedisConn>,
    /// A consumer handle used only for metadata requests.
    pub kafka: Arc<BaseConsumer>,
}

impl Probes {
    pub fn kafka_client(
        kafka: &crate::kafka::KafkaSettings,
    ) -> Result<Arc<BaseConsumer>, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = crate::kafka::base_config(kafka).create()?;
        Ok(Arc::new(consumer))
    }

    /// Checks every dependency once; returns those that failed.
    pub async fn check(&self) -> Vec<Dependency> {
        let mut failing = Vec::new();
        let db = tokio::time::timeout(
            Duration::from_secs(2),
            self.db.execute_unprepared("SELECT 1"),
        )
        .await;
        if !matches!(db, Ok(Ok(_))) {
            failing.push(Dependency::Postgres);
        }
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let ping = tokio::time::timeout(
                Duration::from_secs(2),
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            if !matches!(ping, Ok(Ok(_))) {
                failing.push(Dependency::Redis);
            }
        }
        let kafka = self.kafka.clone();
        let meta = tokio::task::spawn_blocking(move || {
            kafka
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| !m.brokers().is_empty())
        })
        .await;
        if !matches!(meta, Ok(Ok(true))) {
            failing.push(Dependency::Kafka);
        }
        failing
    }

    fn dependencies(&self) -> &'static [Dependency] {
        if self.redis.is_some() {
            &[Dependency::Kafka, Dependency::Postgres, Dependency::Redis]
        } else {
            &[Dependency::Kafka, Dependency::Postgres]
        }
    }

    /// Probes once a second until shutdown, logging changes.
    pub fn spawn(self, health: Health, shutdown: Shutdown) {
        tokio::spawn(async move {
            let mut last: Option<Vec<Dependency>> = None;
            loop {
                let failing = self.check().await;
                if last.as_ref() != Some(&failing) {
                    if failing.is_empty() {
                        tracing::info!("ready: Kafka, Postgres and Redis answer");
                    } else {
                        tracing::warn!(failing = ?failing, "not ready: dependencies do not answer");
                    }
                    last = Some(failing.clone());
                }
                for dependency in self.dependencies() {
                    let up = !failing.contains(dependency);
                    metrics::gauge!(DEPENDENCY_UP, "dependency" => dependency.label()).set(if up {
                        1.0
                    } else {
                        0.0
                    });
                }
                health.set_probe_result(failing);
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}
