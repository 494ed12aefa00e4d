//! `lbd`, the lbaas controller daemon.

use clap::Parser;
use lbaas::config::DaemonConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = DaemonConfig::parse();
    lbaas::daemon::run(config, lbaas::signals::shutdown_signal()).await
}
