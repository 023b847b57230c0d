//! Logging set-up: text or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`, with the chattiest dependencies turned down).

use tracing_subscriber::{fmt, EnvFilter};

/// `LOG_FORMAT`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// Installs the process's log subscriber (a second call keeps the first).
pub fn init(log_format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,rdkafka=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // A closed stderr (its reader gone) must not turn into a panic in
        // whatever task happens to log next.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    // A second init (as in tests) keeps the first subscriber; that is fine.
    let _ = if log_format == LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
