//! Logging set-up: text or JSON lines on stderr, filtered by `RUST_LOG`
//! (default `info`, with the chattiest dependencies turned down).

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(log_format: &str) {
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
    let _ = if log_format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
