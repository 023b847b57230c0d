//! The ingest's command line: settings as flags and environment variables.

use std::net::SocketAddr;

use clap::{Args, Parser};

use viewpipe_schema::settings::{CommonSettings, Secret};

#[derive(Parser, Debug)]
#[command(
    name = "ingest",
    version,
    about = "viewpipe's HTTP API: validates view events, publishes them to Kafka, serves counts"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
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
