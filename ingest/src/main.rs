use clap::Parser;
use tokio::net::TcpListener;

use ingest::settings::{Cli, Command, Settings};
use viewpipe_runtime::Shutdown;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Publish(args)) => {
            viewpipe_schema::telemetry::init(&args.log_format);
            match ingest::publish::run(&args).await {
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            }
        }
        Some(Command::Serve(settings)) => serve(*settings).await,
        None => serve(cli.settings).await,
    };
    if let Err(e) = result {
        eprintln!("ingest: error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    viewpipe_schema::telemetry::init(&settings.common.log_format);
    let listener = TcpListener::bind(settings.ingest_addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on INGEST_ADDR {}: {e}", settings.ingest_addr)
    })?;
    let shutdown = Shutdown::default();
    shutdown.on_signals();
    ingest::run(settings, listener, shutdown).await
}
