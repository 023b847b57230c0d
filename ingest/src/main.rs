use clap::Parser;
use tokio::net::TcpListener;

use ingest::settings::Cli;
use viewpipe_runtime::Shutdown;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings = cli.settings;
    viewpipe_schema::telemetry::init(&settings.common.log_format);
    let result = async {
        let listener = TcpListener::bind(settings.ingest_addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on INGEST_ADDR {}: {e}", settings.ingest_addr)
        })?;
        let shutdown = Shutdown::default();
        shutdown.on_signals();
        ingest::run(settings, listener, shutdown).await
    }
    .await;
    if let Err(e) = result {
        eprintln!("ingest: error: {e:#}");
        std::process::exit(1);
    }
}
