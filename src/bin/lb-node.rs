//! `lb-node`, the lbaas data plane: one LB node. The controller starts it,
//! configures it through the admin API and reads its status there.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use lbaas::dataplane::{admin, Node};

/// lb-node: an lbaas LB node (HTTP/TCP proxy). The admin secret comes from
/// the environment (LB_NODE_SECRET), never the command line.
#[derive(Parser)]
#[command(name = "lb-node", version)]
struct Args {
    /// This node's id, as the controller knows it.
    #[arg(long)]
    node_id: String,
    /// Where the admin API listens (port 0 picks one).
    #[arg(long)]
    admin_listen: SocketAddr,
    /// Worker threads [default: one per core]; 1 runs everything on one thread.
    #[arg(long, env = "LB_NODE_THREADS")]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let secret = std::env::var("LB_NODE_SECRET").unwrap_or_default();
    if secret.is_empty() {
        eprintln!("lb-node: LB_NODE_SECRET must be set to the admin API's secret");
        std::process::exit(2);
    }
    let node = Node::new(args.node_id.clone(), secret);
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", args.admin_listen))?;
    let addr = listener.local_addr()?;
    println!("lb-node ready admin={addr}");
    std::io::stdout().flush()?;
    tracing::info!(node = %args.node_id, "admin API on {addr}");
    let app = admin::router(node.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    node.stop_listening().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
