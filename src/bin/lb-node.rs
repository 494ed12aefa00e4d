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
    /// Threads that carry traffic [default: one per core]; each runs its own
    /// single-threaded runtime and listener. 1 runs everything on one thread.
    #[arg(long, env = "LB_NODE_THREADS")]
    threads: Option<usize>,
    /// Writes this process's pid here first thing, so whoever started it
    /// can find it even if they died right after starting it.
    #[arg(long)]
    pid_file: Option<std::path::PathBuf>,
    /// On SIGTERM, how long open connections get to finish, in seconds
    /// (kept under the controller's 3 s before it sends SIGKILL).
    #[arg(long, default_value_t = 2.0)]
    drain_timeout: f64,
    /// Log here instead of to stderr, rotated at `--log-max-bytes`.
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
    /// Size at which the log file is rotated.
    #[arg(long, default_value_t = lbaas::dataplane::logfile::DEFAULT_MAX_BYTES)]
    log_max_bytes: u64,
    /// Rotated log files kept (`.1` is the newest).
    #[arg(long, default_value_t = lbaas::dataplane::logfile::DEFAULT_KEEP)]
    log_keep: u32,
    /// Milliseconds a client of the admin API has to send a request head
    /// (also the idle time allowed between requests on a keep-alive connection).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    admin_header_timeout_ms: u64,
    /// Admin API connections open at once; more get a 503 and are closed.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    admin_max_connections: u32,
    /// Once the admin socket is bound and the log and pid files are open,
    /// become this user (a name or a uid) with `no_new_privs` and no
    /// capabilities. lbd passes it under `--network netns`, where nodes start as root.
    #[arg(long)]
    run_as: Option<String>,
    /// PEM file of CA certificates trusted for `https://` auth services, in
    /// addition to the platform's roots (which honour SSL_CERT_FILE and
    /// SSL_CERT_DIR). Read once at start, before privileges are dropped.
    #[arg(long)]
    auth_ca_file: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    init_logging(&args)?;
    // Bound before the drop (the admin port may be privileged) and before
    // any thread exists, so the drop covers every thread.
    let admin = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("binding the admin API on {}", args.admin_listen))?;
    admin.set_nonblocking(true)?;
    // Once, before any runtime (it reads files) and while the file is
    // still readable by the user lb-node started as.
    lbaas::dataplane::auth::tls::init(args.auth_ca_file.as_deref())
        .context("loading the TLS roots for auth services")?;
    if let Some(user) = &args.run_as {
        let who = lbaas::dataplane::privilege::RunAs::resolve(user)?;
        lbaas::dataplane::privilege::drop_to(who).context("dropping privileges")?;
        tracing::info!(
            uid = who.uid,
            gid = who.gid,
            "running as {user}, no capabilities"
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // The admin API and health checks run on the main thread; with more than
    // one thread, traffic runs on per-core worker runtimes (see `Node`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let workers = if threads > 1 {
        start_workers(threads)?
    } else {
        Vec::new()
    };
    runtime.block_on(run(args, admin, workers))
}

/// Starts `n` threads, each running a single-threaded runtime until the process exits.
fn start_workers(n: usize) -> anyhow::Result<Vec<tokio::runtime::Handle>> {
    (0..n)
        .map(|i| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("lb-node-worker-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            Ok(handle)
        })
        .collect()
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let Some(path) = &args.log_file else {
        builder.with_writer(std::io::stderr).init();
        return Ok(());
    };
    let log = lbaas::dataplane::logfile::RotatingLog::open(path, args.log_max_bytes, args.log_keep)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    builder
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .init();
    // stderr may point at a rotated-away file: panics go through the log too.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        default_hook(info);
    }));
    Ok(())
}

async fn run(
    args: Args,
    admin: std::net::TcpListener,
    workers: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    let secret = std::env::var("LB_NODE_SECRET").unwrap_or_default();
    if secret.is_empty() {
        eprintln!("lb-node: LB_NODE_SECRET must be set to the admin API's secret");
        std::process::exit(2);
    }
    let grace = std::time::Duration::try_from_secs_f64(args.drain_timeout)
        .context("--drain-timeout must be a number of seconds, 0 or more")?;
    let node = Node::new(args.node_id.clone(), secret, workers);
    // Before any traffic: the soft limit (often 1024) would otherwise be hit
    // long before max_connections.
    if let Some(soft) = lbaas::dataplane::fdlimit::raise_to_hard() {
        node.limit_fds(soft);
        tracing::info!(
            "RLIMIT_NOFILE {soft}: up to {} connections",
            lbaas::dataplane::fdlimit::connection_cap(soft)
        );
    }
    let listener = tokio::net::TcpListener::from_std(admin)?;
    let addr = listener.local_addr()?;
    println!("lb-node ready admin={addr}");
    std::io::stdout().flush()?;
    tracing::info!(node = %args.node_id, "admin API on {addr}");
    let app = admin::router(node.clone());
    let limits = lbaas::serve::Limits {
        header_timeout: std::time::Duration::from_millis(args.admin_header_timeout_ms),
        max_connections: args.admin_max_connections as usize,
        shutdown_grace: grace,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let admin = lbaas::serve::serve(listener, app, limits, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let stop = async {
        lbaas::signals::shutdown_signal().await;
        let _ = stop_tx.send(true);
        // The admin API and the traffic drain at the same time, so the whole
        // stop stays within `--drain-timeout` (under the driver's SIGKILL).
        node.drain(grace).await
    };
    let ((), open) = tokio::join!(admin, stop);
    tracing::info!(connections_cut = open, "stopped");
    Ok(())
}
