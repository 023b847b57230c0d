use clap::Parser;

use ingest::settings::{Cli, Command, Settings};
use viewpipe_runtime::Shutdown;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Publish(args)) => {
            viewpipe_runtime::telemetry::init(args.log_format);
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
    viewpipe_runtime::telemetry::init(settings.common.log_format);
    let prometheus = ingest::metrics::install()?;
    let shutdown = Shutdown::default();
    shutdown.on_signals();
    ingest::App::build(settings, prometheus, shutdown)
        .await?
        .run_until_stopped()
        .await
}
