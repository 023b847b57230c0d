use clap::Parser;

use aggregator::settings::{Cli, Command};
use viewpipe_runtime::Shutdown;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Migrate(args)) => {
            viewpipe_runtime::telemetry::init(args.log_format);
            aggregator::migrate(&args.database_url).await
        }
        Some(Command::Flush(args)) => {
            viewpipe_runtime::telemetry::init(args.log_format);
            aggregator::request_flush(&args).await
        }
        Some(Command::ResetPending(args)) => {
            viewpipe_runtime::telemetry::init(args.log_format);
            aggregator::reset_pending(&args).await
        }
        Some(Command::Backfill(args)) => {
            viewpipe_runtime::telemetry::init(args.log_format);
            match aggregator::backfill::run(&args).await {
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            }
        }
        Some(Command::Run(settings)) => serve(*settings).await,
        None => serve(cli.run).await,
    };
    if let Err(e) = result {
        eprintln!("aggregator: error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(settings: aggregator::settings::Settings) -> anyhow::Result<()> {
    viewpipe_runtime::telemetry::init(settings.common.log_format);
    let prometheus = aggregator::metrics::install()?;
    let shutdown = Shutdown::default();
    shutdown.on_signals();
    aggregator::App::build(settings, prometheus, shutdown)
        .await?
        .run_until_stopped()
        .await
}
