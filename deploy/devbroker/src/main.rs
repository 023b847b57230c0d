//! `viewpipe-devbroker`: the local stack's Kafka. Listens on the first address of
//! `KAFKA_BROKERS`, creates the views, replay and DLQ topics, and runs until
//! SIGTERM or Ctrl-C. Data is kept in memory only.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

use viewpipe_devbroker::DevBroker;
use viewpipe_runtime::settings::CommonSettings;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Development Kafka broker (librdkafka mock cluster) for viewpipe"
)]
struct Cli {
    #[command(flatten)]
    common: CommonSettings,
    /// PEM certificate (chain) to speak TLS with; clients then connect with
    /// `KAFKA_SECURITY_PROTOCOL=ssl`.
    #[arg(long = "tls-cert", env = "DEV_TLS_CERT", requires = "serve_tls_key")]
    serve_tls_cert: Option<std::path::PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long = "tls-key", env = "DEV_TLS_KEY", requires = "serve_tls_cert")]
    serve_tls_key: Option<std::path::PathBuf>,
    /// Partitions of each topic it creates.
    #[arg(long, env = "DEV_PARTITIONS", default_value_t = 8)]
    partitions: i32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    viewpipe_runtime::telemetry::init(cli.common.log_format);
    let first = cli
        .common
        .kafka
        .brokers
        .split(',')
        .next()
        .unwrap_or_default();
    let listen: SocketAddr = first.parse().with_context(|| {
        format!("KAFKA_BROKERS {first:?} must start with an ip:port to listen on")
    })?;
    let broker = match (&cli.serve_tls_cert, &cli.serve_tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            DevBroker::start_tls(listen, &read(cert)?, &read(key)?).await?
        }
        _ => DevBroker::start(listen).await?,
    };
    for topic in [
        &cli.common.views_topic,
        &cli.common.replay_topic,
        &cli.common.dlq_topic,
    ] {
        broker.create_topic(topic, cli.partitions)?;
    }
    tracing::info!(
        addr = %broker.addr(),
        partitions = cli.partitions,
        topics = %format!("{}, {}, {}", cli.common.views_topic, cli.common.replay_topic, cli.common.dlq_topic),
        "dev broker ready (in memory: data is lost when it stops)"
    );
    shutdown_signal().await;
    tracing::info!("dev broker stopping");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command's definition (unique names, valid `requires`) only when
    /// it is built: build it here rather than at the first start.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
