//! The ingest's metric names, declared once, and the request-metrics middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{describe_counter, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusHandle;

pub(crate) const REQUESTS: &str = "viewpipe_ingest_requests_total";
pub(crate) const REQUEST_DURATION: &str = "viewpipe_ingest_request_duration_seconds";
pub const EVENTS: &str = "viewpipe_ingest_events_total";
pub(crate) const PUBLISH_DURATION: &str = "viewpipe_ingest_publish_duration_seconds";
pub(crate) const REFUSALS: &str = "viewpipe_ingest_refusals_total";
pub(crate) const BOT_VIEWS: &str = "viewpipe_ingest_bot_views_total";
pub(crate) const VISITOR_IDS: &str = "viewpipe_ingest_visitor_ids_total";
pub(crate) const ADMIN_AUTH_FAILURES: &str = "viewpipe_ingest_admin_auth_failures_total";

/// The `reason` labels of [`REFUSALS`]: the error codes of the API's protection.
pub(crate) const REFUSAL_REASONS: &[&str] = &[
    "missing_write_key",
    "invalid_write_key",
    "namespace_not_allowed",
    "rate_limited",
    "missing_read_key",
    "invalid_read_key",
];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The ingest's histograms and their buckets.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[
    (REQUEST_DURATION, LATENCY_BUCKETS),
    (PUBLISH_DURATION, LATENCY_BUCKETS),
];

/// Installs the process's Prometheus recorder with the ingest's buckets (once per
/// process: the binary calls it; tests share one recorder between services).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    viewpipe_runtime::metrics::install(HISTOGRAMS)
}

/// Describes every metric of the ingest and lists its series at zero.
pub fn describe() {
    viewpipe_runtime::health::describe_metrics();
    describe_counter!(REQUESTS, "HTTP requests by route template and status");
    describe_counter!(
        ADMIN_AUTH_FAILURES,
        "Admin requests refused: token missing or wrong, or ADMIN_TOKEN unset"
    );
    metrics::counter!(ADMIN_AUTH_FAILURES).increment(0);
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request duration by route template"
    );
    describe_counter!(
        EVENTS,
        "View events accepted (acknowledged by the broker) or rejected"
    );
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time from publish to broker acknowledgement"
    );
    describe_counter!(
        REFUSALS,
        "Requests refused by the API's protection (WRITE_KEYS, READ_KEY, rate limits), by \
         reason (the error code); a batch element refused for its namespace counts once"
    );
    describe_counter!(
        BOT_VIEWS,
        "Views from known crawlers answered but not published (BOT_FILTER=drop), by \
         content_type (`other` for a namespace NAMESPACES does not list)"
    );
    describe_counter!(
        VISITOR_IDS,
        "Requests from a browser with views lacking a sessionId (VISITOR_HASH=on), one per \
         request (a batch counts once): derived (they got a visitorId), or no_salt \
         (Postgres gave no salt; they were published without one)"
    );
    for result in ["derived", "no_salt"] {
        metrics::counter!(VISITOR_IDS, "result" => result).increment(0);
    }
    for result in ["accepted", "rejected"] {
        metrics::counter!(EVENTS, "result" => result).increment(0);
    }
    for reason in REFUSAL_REASONS {
        metrics::counter!(REFUSALS, "reason" => *reason).increment(0);
    }
    // Listed (empty) before the first publish.
    let _ = metrics::histogram!(PUBLISH_DURATION);
}

/// Records every request under its route template (never the raw path).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_DURATION, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS, "route" => route, "status" => status).increment(1);
    response
}
