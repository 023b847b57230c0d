//! The ingest's command line: settings as flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method};
use clap::{Args, Parser, Subcommand};
use tower_http::cors::{AllowOrigin, CorsLayer};

use viewpipe_runtime::kafka::KafkaSettings;
use viewpipe_runtime::settings::{parse_duration, CommonSettings, Secret, SecretParser};
use viewpipe_runtime::telemetry::LogFormat;
use viewpipe_schema::Namespaces;

#[derive(Parser, Debug)]
#[command(
    name = "ingest",
    version,
    about = "viewpipe's HTTP API: validates view events, publishes them to Kafka, serves counts",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(Box<Settings>),
    /// Publish an NDJSON file of views to a topic (by default the replay topic, for
    /// `aggregator backfill`), validated as the API validates them. Exits 0 when every
    /// line was published, 2 when some were rejected, 130 when interrupted.
    Publish(Box<PublishArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// HTTP listener.
    #[arg(long, env = "INGEST_ADDR", default_value = "127.0.0.1:8080")]
    pub ingest_addr: SocketAddr,
    /// Allowed contentType values, comma-separated; `*` allows any valid name. An
    /// edge rule: aggregators count every namespace, so ingests may add one first.
    #[arg(long, env = "NAMESPACES", default_value = "resource,course")]
    pub namespaces: viewpipe_schema::Namespaces,
    /// Bearer token for admin endpoints, at least 32 characters; unset, they refuse
    /// everyone.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = SecretParser::with(admin_token))]
    pub admin_token: Option<Secret>,
    /// How long a client has to send a request's headers (e.g. 500ms, 10s, 2m);
    /// a connection that has not sent them all by then is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a client has to send a request's body, from the end of its headers;
    /// a body not complete by then is answered 408 `body_timeout` and its connection closed.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Most connections open at once (on the API port, and again on METRICS_ADDR);
    /// at the cap the ingest accepts no more until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Origins allowed to call the API from a browser, comma-separated; `*` any;
    /// empty none.
    #[arg(long, env = "CORS_ORIGINS", default_value = "")]
    pub cors_origins: CorsOrigins,
    /// `on`: a view a browser sent (the pixel, a text/plain beacon, a JSON POST with
    /// an Origin header) without a sessionId gets a cookieless `visitorId`, a hash of
    /// the day's salt, the client's address and its User-Agent (neither is stored).
    /// `off`: no view gets one.
    #[arg(long, env = "VISITOR_HASH", value_enum, default_value_t)]
    pub visitor_hash: crate::visitor::VisitorHash,
    /// How far in the past a view's `occurredAt` may lie: a whole number with `d`,
    /// `h`, `m` or `s` (from 1m to 36500d). Older views are refused (`too_old`); load
    /// history with `ingest publish --topic views.replay` and `aggregator backfill`.
    #[arg(long, env = "MAX_EVENT_AGE", default_value_t)]
    pub max_event_age: crate::age::MaxEventAge,
    #[command(flatten)]
    pub protect: crate::protect::ProtectSettings,
}

/// Fewest characters an `ADMIN_TOKEN` may have: a shorter one could be guessed.
pub(crate) const MIN_ADMIN_TOKEN: usize = 32;

/// `ADMIN_TOKEN`: refused when short (without repeating it).
fn admin_token(s: &str) -> Result<Secret, String> {
    let length = s.chars().count();
    if length < MIN_ADMIN_TOKEN {
        return Err(format!(
            "must be at least {MIN_ADMIN_TOKEN} characters (this one has {length}); e.g. `openssl rand -hex 32`"
        ));
    }
    s.parse()
}

impl Settings {
    /// The HTTP server's limits.
    pub fn limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections as usize,
        }
    }
}

/// `CORS_ORIGINS`, parsed when the settings are read: a bad origin stops start-up
/// with the setting's name rather than at the first browser request.
#[derive(Clone, Debug, Default)]
pub enum CorsOrigins {
    /// No browser origin may call the API (no CORS headers are sent).
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// Only these origins.
    List(Vec<HeaderValue>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" => Ok(CorsOrigins::None),
            "*" => Ok(CorsOrigins::Any),
            list => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| {
                    HeaderValue::from_str(o).map_err(|_| format!("{o:?} is not a valid origin"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(CorsOrigins::List),
        }
    }
}

impl CorsOrigins {
    /// The CORS layer for these origins (`None`: no layer, browsers are refused).
    pub(crate) fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            CorsOrigins::None => return None,
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
                .max_age(std::time::Duration::from_secs(600)),
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// The NDJSON file: one view per line, in the API's object form
    /// (`{"contentType":..,"contentId":..,"occurredAt":..}`) or as event JSON
    /// (`{"v":1,..}`); `-` reads standard input.
    #[arg(default_value = "-")]
    pub input: String,
    /// The topic to publish to.
    #[arg(long, env = "REPLAY_TOPIC", default_value = "views.replay")]
    pub topic: String,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Content types accepted, comma-separated.
    #[arg(long, env = "NAMESPACES", default_value = "resource,course")]
    pub namespaces: Namespaces,
    /// Skip the first N lines (to resume a run that was stopped; it says where).
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Also write every rejected line (number, code, reason) to this file, as NDJSON.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}
