//! Wires lbd together: state dir and token, store, drivers, DNS server, API,
//! reconciler; then serves until told to stop.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::{validate_zone, ComputeKind, DaemonConfig, NetworkKind};
use crate::dns::{DnsError, EmbeddedDns};
use crate::drivers::backend::BackendDriver;
use crate::drivers::compute::process::ProcessCompute;
use crate::drivers::compute::{ComputeDriver, ComputeWarnings};
use crate::drivers::network::claims::SubnetClaims;
use crate::drivers::network::loopback::LoopbackNetwork;
use crate::drivers::network::netns::NetnsNetwork;
use crate::drivers::network::NetworkDriver;
use crate::drivers::node_admin::NodeAdminClient;
use crate::health::{HealthChecker, HealthSettings};
use crate::paths::ADMIN_TOKEN_FILE;
use crate::reconcile::{ReconcileSettings, Reconciler};
use crate::store::{Retention, Store};

/// Runs lbd until `shutdown` resolves. Prints `lbd ready api=<addr> dns=<addr>`
/// on stdout once both listeners are bound (the readiness signal for scripts).
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (state_dir, store) = open_state(&config)?;
    let drivers = Drivers::build(&config, &state_dir)?;
    let listeners = Listeners::bind(&config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let (api_addr, dns_addr) = (listeners.api.local_addr()?, listeners.udp.local_addr()?);
    let compute = crate::drivers::compute::Compute::new(drivers.compute.clone());
    let background = Background::start(
        &config,
        &store,
        &drivers,
        wake.clone(),
        &stop_rx,
        api_addr,
        (listeners.udp, listeners.tcp),
    )
    .await?;
    let rate_limiter = Arc::new(api::rate_limit::ApiRateLimiter::new(config.api_rates()));
    forget_idle_callers(rate_limiter.clone(), stop_rx.clone());
    let state = AppState {
        store,
        wake,
        network: drivers.network,
        zone: config.zone.trim_end_matches('.').to_string(),
        node_admin_port: config.node_admin_port,
        backends: Arc::new(api::BackendGuard::new(
            api_addr,
            dns_addr,
            config.node_admin_port,
            config.allow_backend_cidr.clone(),
        )),
        default_quota: config.default_quota(),
        rate_limiter,
        compute_warnings: drivers.compute_warnings.clone(),
        runs_vm_backends: drivers.runs_vm_backends,
        backend_image_dirs: config.backend_image_dirs(&state_dir).into(),
        tls_keys: crate::store::tls_keys::KeyStore::open(&config.state_dir())?,
        mappings: background.mappings.clone(),
    };
    let app = api::router(state);
    println!("lbd ready api={api_addr} dns={dns_addr}");
    std::io::stdout().flush()?;
    tracing::info!(
        "serving the API on {api_addr}, DNS zone {} on {dns_addr}",
        config.zone
    );
    let server = serve_api(listeners.api, app, api_limits(&config), stop_rx);
    shutdown.await;
    tracing::info!("shutting down; LB nodes keep serving and are adopted on the next start");
    let _ = stop_tx.send(true);
    server.await?;
    // Before joining: a reconciler pass may be waiting for the KVM probe.
    compute.shutdown().await;
    background.join().await
}

/// Drops, once a minute, the API rate limiter's cells of callers whose
/// budget is whole again, so addresses seen once do not stay in memory.
fn forget_idle_callers(
    limiter: Arc<api::rate_limit::ApiRateLimiter>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => limiter.forget_idle(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}

/// The state dir (mode 0700) and the store, whose built-in `admin` user
/// gets the hash of the admin token (the token itself is never stored).
fn open_state(config: &DaemonConfig) -> anyhow::Result<(PathBuf, Store)> {
    validate_zone(&config.zone).map_err(anyhow::Error::msg)?;
    let state_dir = config.state_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    // DirBuilder's mode applies only to a new dir; an existing one is
    // closed too, since it holds the admin token and node secrets.
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making state dir {} private", state_dir.display()))?;
    let token = ensure_admin_token(&state_dir)?;
    let store = Store::open(&state_dir.join("lbaas.db")).context("opening the state database")?;
    let hash = api::hash_token(&token);
    store
        .transaction_blocking(|tx| crate::store::ensure_admin(tx, &hash))
        .context("recording the admin token's hash")?;
    Ok((state_dir, store))
}

struct Drivers {
    network: Arc<dyn NetworkDriver>,
    compute: Arc<dyn ComputeDriver>,
    /// Written by the compute driver, shown by the API.
    compute_warnings: ComputeWarnings,
    dns: Arc<EmbeddedDns>,
    /// Managed backends: processes, and VMs under `--compute libvirt`.
    backends: Arc<dyn BackendDriver>,
    runs_vm_backends: bool,
}

impl Drivers {
    fn build(config: &DaemonConfig, state_dir: &Path) -> anyhow::Result<Self> {
        let (pool, prefix) = config.subnet_pool();
        let claims = SubnetClaims::open(config.subnet_lock_dir.as_deref())?;
        let network: Arc<dyn NetworkDriver> = match config.network {
            NetworkKind::Loopback => Arc::new(LoopbackNetwork::new(pool, prefix, claims)?),
            NetworkKind::Netns => Arc::new(NetnsNetwork::new(
                pool,
                prefix,
                &config.netns_prefix,
                claims,
            )?),
        };
        let compute_warnings = ComputeWarnings::default();
        let (compute, vm_backends) = match config.compute {
            ComputeKind::Process => (process_compute(config, state_dir)?, None),
            ComputeKind::Libvirt => libvirt_compute(config, state_dir, &compute_warnings)?,
        };
        let backends = backend_driver(config, state_dir, vm_backends)?;
        let dns = Arc::new(EmbeddedDns::new(&config.zone, config.dns_ttl)?);
        Ok(Drivers {
            network,
            compute,
            compute_warnings,
            dns,
            runs_vm_backends: backends.runs_vms(),
            backends: Arc::new(backends),
        })
    }
}

fn process_compute(
    config: &DaemonConfig,
    state_dir: &Path,
) -> anyhow::Result<Arc<dyn ComputeDriver>> {
    let binary = match &config.node_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("lb-node"),
    };
    anyhow::ensure!(
        binary.exists(),
        "lb-node binary not found at {} (set --node-binary)",
        binary.display()
    );
    Ok(Arc::new(
        ProcessCompute::new(binary, state_dir.join("nodes"))?
            .with_node_log(config.node_log_max_bytes, config.node_log_keep)
            .with_node_user(Some(config.node_user.clone())),
    ))
}

/// Managed backends' processes (pid and output files under the state dir;
/// under netns they run as the node user, like lb-node), and the VM driver
/// when lbd runs VMs.
fn backend_driver(
    config: &DaemonConfig,
    state_dir: &Path,
    vm: Option<Box<dyn BackendDriver>>,
) -> anyhow::Result<crate::drivers::backend::Backends> {
    let user = (config.network == NetworkKind::Netns).then(|| config.node_user.clone());
    let dir = state_dir.join("backends");
    let process = crate::drivers::backend::process::ProcessBackends::new(dir.clone(), user)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(crate::drivers::backend::Backends::new(
        Box::new(process),
        vm,
    ))
}

/// The LB-node compute driver, and the VM backend driver sharing its
/// libvirt connection and domain type.
type LibvirtDrivers = (Arc<dyn ComputeDriver>, Option<Box<dyn BackendDriver>>);

struct Listeners {
    /// DNS, UDP and TCP on the same port.
    udp: UdpSocket,
    tcp: TcpListener,
    api: TcpListener,
}

impl Listeners {
    async fn bind(config: &DaemonConfig) -> anyhow::Result<Self> {
        let (udp, tcp) = bind_dns(config.dns_listen).await?;
        let api = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the API on {}", config.listen))?;
        Ok(Listeners { udp, tcp, api })
    }
}

/// The reconciler, the health checker and the DNS server, each a task that
/// ends once `stop` turns true.
struct Background {
    /// Shared with the API.
    mappings: Arc<crate::federation::MappingSync>,
    reconcile: JoinHandle<()>,
    managed: JoinHandle<()>,
    checker: JoinHandle<()>,
    dns: JoinHandle<Result<(), DnsError>>,
}

impl Background {
    async fn start(
        config: &DaemonConfig,
        store: &Store,
        drivers: &Drivers,
        wake: Arc<Notify>,
        stop: &watch::Receiver<bool>,
        api: SocketAddr,
        (udp, tcp): (UdpSocket, TcpListener),
    ) -> anyhow::Result<Self> {
        let node_admin = Arc::new(NodeAdminClient::new(Duration::from_secs(5)));
        // Nodes that end by themselves go straight from the compute driver
        // to the health checker, which fails them over at once. Set before
        // the start-up check below watches the nodes it adopts.
        let (exits_tx, exits) = tokio::sync::mpsc::unbounded_channel();
        drivers.compute.report_exits(exits_tx);
        let reconciler = Arc::new(Reconciler::new(
            store.clone(),
            drivers.compute.clone(),
            drivers.network.clone(),
            drivers.dns.clone(),
            node_admin.clone(),
            reconcile_settings(config, vec![api, udp.local_addr()?])?,
        ));
        reconciler.claim_project_subnets().await?;
        // Before the first pass, so nodes that died while lbd was down restart in place.
        reconciler
            .restart_nodes_found_dead()
            .await
            .context("checking the nodes at start")?;
        let nodes_serving = reconciler.nodes_serving();
        // Federation mappings: the API pushes a changed set to the nodes,
        // the managed backends' loop follows what nodes learn and catches
        // lagging nodes up.
        let mappings = Arc::new(crate::federation::MappingSync::new(
            store.clone(),
            crate::store::federation_tokens::TokenStore::open(&config.state_dir())?,
            config.node_admin_port,
        ));
        let reconcile = tokio::spawn(reconciler.run(wake.clone(), stop.clone()));
        let managed = tokio::spawn(
            crate::managed::Manager::new(
                store.clone(),
                drivers.backends.clone(),
                (*node_admin).clone(),
                drivers.network.clone(),
                crate::managed::ManagerSettings {
                    node_admin_port: config.node_admin_port,
                    lifetime_retention_s: config.events_retention,
                    replace_drain: Duration::from_secs(config.drain_timeout),
                },
            )
            .with_nodes_serving(nodes_serving)
            .with_mappings(mappings.clone())
            .run(stop.clone()),
        );
        let checker = Arc::new(
            HealthChecker::new(store.clone(), node_admin, wake, health_settings(config))
                .with_exits(exits),
        );
        let checker = tokio::spawn(checker.run(stop.clone()));
        let dns = {
            let dns = drivers.dns.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                dns.serve(udp, tcp, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            })
        };
        Ok(Background {
            mappings,
            reconcile,
            managed,
            checker,
            dns,
        })
    }

    /// Waits for every task, in the order they were started.
    async fn join(self) -> anyhow::Result<()> {
        self.reconcile.await?;
        self.managed.await?;
        self.checker.await?;
        self.dns.await??;
        Ok(())
    }
}

/// `control_plane`: lbd's bound API and DNS listeners.
fn reconcile_settings(
    config: &DaemonConfig,
    control_plane: Vec<SocketAddr>,
) -> anyhow::Result<ReconcileSettings> {
    // The state dir exists: `open_state` made it.
    let sticky_secret =
        crate::reconcile::sticky_key::StickySecret::load_or_create(&config.state_dir())?;
    Ok(ReconcileSettings {
        node_admin_port: config.node_admin_port,
        failover_grace: Duration::from_secs(config.failover_grace),
        drain_min: Duration::from_secs(u64::from(config.dns_ttl)),
        drain_max: Duration::from_secs(config.drain_timeout.max(u64::from(config.dns_ttl))),
        redis: config
            .redis_url
            .clone()
            .map(|url| crate::model::node::RedisTarget {
                url,
                timeout_ms: config.redis_timeout_ms,
                // Set per instance by the reconciler.
                key_prefix: String::new(),
            }),
        sticky_secret: Some(sticky_secret),
        tls_keys: Some(crate::store::tls_keys::KeyStore::open(&config.state_dir())?),
        federation_tokens: Some(crate::store::federation_tokens::TokenStore::open(
            &config.state_dir(),
        )?),
        resolver: config.resolver,
        name_guard: Some(crate::model::NameGuard {
            control_plane,
            node_admin_port: config.node_admin_port,
            allowed: config.allow_backend_cidr.clone(),
            // Per instance, filled in with its config (`reconcile`).
            own_nodes: None,
        }),
        ..Default::default()
    })
}

fn health_settings(config: &DaemonConfig) -> HealthSettings {
    HealthSettings {
        node_admin_port: config.node_admin_port,
        failover_max_share: config.failover_max_share,
        retention: Retention {
            raw_samples: config.samples_raw_retention,
            minute_samples: config.samples_minute_retention,
            events: config.events_retention,
            audit: config.audit_retention_days.saturating_mul(86_400),
        },
        default_quota: config.default_quota(),
        retention_every: Duration::from_secs(config.retention_interval),
    }
}

/// How long API requests in flight get to finish once lbd is told to stop.
const API_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn api_limits(config: &DaemonConfig) -> crate::serve::Limits {
    crate::serve::Limits {
        header_timeout: Duration::from_millis(config.api_header_timeout_ms),
        max_connections: config.api_max_connections as usize,
        shutdown_grace: API_SHUTDOWN_GRACE,
    }
}

/// Serves the API on its own task until `stop` turns true.
fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    limits: crate::serve::Limits,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(crate::serve::serve(listener, app, limits, async move {
        let _ = stop.wait_for(|s| *s).await;
    }))
}

#[cfg(feature = "libvirt")]
fn libvirt_compute(
    config: &DaemonConfig,
    state_dir: &Path,
    warnings: &ComputeWarnings,
) -> anyhow::Result<LibvirtDrivers> {
    use crate::drivers::backend::vm::VmBackends;
    use crate::drivers::compute::libvirt::{DomainTypeSetting, LibvirtCompute, VmSettings};
    anyhow::ensure!(
        config.network == NetworkKind::Netns,
        "--compute libvirt needs --network netns (VMs attach to the project's bridge)"
    );
    let image = match &config.vm_image {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|target| target.join("image"))
            .context("cannot place the default image dir; set --vm-image")?,
    };
    let libvirt = Arc::new(LibvirtCompute::new(VmSettings {
        uri: config.libvirt_uri.clone(),
        domain_type: DomainTypeSetting::from(config.vm_domain_type),
        kernel: image.join("vmlinuz"),
        initrd: image.join("initramfs.cpio.gz"),
        memory_mib: config.vm_memory,
        vcpus: config.vm_vcpus,
        prefix: config.vm_prefix.clone(),
        dir: state_dir.join("nodes"),
        secret_dir: config.vm_secret_dir.clone(),
        warnings: warnings.clone(),
    })?);
    let dir = state_dir.join("backends");
    let vm = VmBackends::new(libvirt.clone(), dir.clone())
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok((libvirt, Some(Box::new(vm))))
}

#[cfg(not(feature = "libvirt"))]
fn libvirt_compute(
    _config: &DaemonConfig,
    _state_dir: &Path,
    _warnings: &ComputeWarnings,
) -> anyhow::Result<LibvirtDrivers> {
    anyhow::bail!(
        "this lbd was built without libvirt support: build with `--features libvirt` \
         (needs libvirt-dev)"
    )
}

/// Reads the admin token, writing a new one (mode 0600) on first start.
fn ensure_admin_token(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(meta) = fs::metadata(&path) {
        let mode = meta.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{} has mode {mode:04o}: group or others can read the admin token; \
             run `chmod 600 {}` (and consider rotating the token) or remove it for a new one",
            path.display(),
            path.display()
        );
    }
    match fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => anyhow::bail!("{} is empty; remove it to get a new token", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(token)
}

/// Binds UDP and TCP on the same port. With port 0 the kernel picks the UDP
/// port, which may be taken for TCP, so a few ports are tried.
async fn bind_dns(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS (UDP) on {addr}"))?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e).with_context(|| format!("binding DNS (TCP) on {bound}")),
        }
    }
    Err(last_err.expect("loop ran")).context("binding DNS on a free port")
}
