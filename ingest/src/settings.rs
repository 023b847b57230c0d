//! The ingest's command line: settings as flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use viewpipe_schema::settings::{CommonSettings, Secret};
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
    Publish(PublishArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// HTTP listener.
    #[arg(long, env = "INGEST_ADDR", default_value = "127.0.0.1:8080")]
    pub ingest_addr: SocketAddr,
    /// Bearer token for admin endpoints; unset, they refuse everyone.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Origins allowed to call the API from a browser, comma-separated; `*` any.
    #[arg(long, env = "CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,
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
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
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
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}
