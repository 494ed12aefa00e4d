//! The command line of `lbctl` (clap derive).

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};
use lbaas::model::instance::BackendEntity;
use lbaas::model::upstream::BackendProtocol;
use lbaas::model::{Algorithm, HashOn, HealthProtocol, Limit, ProxyProtocol, Role, TrafficType};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod backend_tls;
pub mod federation;
pub mod managed;
pub mod mapping;
pub mod smtp;
pub mod sticky;
pub mod tls;
pub use managed::ManagedArgs;
pub use smtp::SmtpArgs;
pub use sticky::StickyArgs;

#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about = "Command-line client for lbaas", after_help = EXAMPLES)]
pub struct Cli {
    /// lbd's API address [default: the context's `url` in
    /// ~/.config/lbaas/config.toml, else the top-level one, else http://127.0.0.1:7070].
    #[arg(long, global = true, env = "LBAAS_URL")]
    pub url: Option<String>,
    /// API token [default: the context's `token` in ~/.config/lbaas/config.toml,
    /// else the top-level one, else (with no context) the admin.token in lbd's
    /// default state dir].
    #[arg(long, global = true, env = "LBAAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Which `[context.NAME]` of ~/.config/lbaas/config.toml to use
    /// [default: its `current`, else its top-level url and token].
    #[arg(long, global = true, env = "LBAAS_CONTEXT")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// Print nothing on success (the exit code tells); errors still go to stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  lbctl project create demo --user john
  lbctl instance create web --project demo --type http --port 8080 --backend 10.1.0.5:80 --backend 10.1.0.6:80
  lbctl instance info web --project demo -o json
  lbctl user create alice --max-projects 2
  lbctl --context alice whoami
  echo '{\"action\": \"info\", \"type\": \"project\"}' | lbctl raw -

Settings: flags override environment (LBAAS_URL, LBAAS_TOKEN, LBAAS_CONTEXT),
which override ~/.config/lbaas/config.toml: url = \"...\", token = \"...\" at the
top level, or per context ([context.alice] url = \"...\" token = \"...\"), chosen
with --context or current = \"alice\". Colors only on a terminal, never with
NO_COLOR set.

Exit codes: 0 ok, 1 the API refused or the instance failed, 2 usage, 3 cannot reach lbd.";

const CREATE_EXAMPLES: &str = "Examples:
  lbctl instance create web --project demo --type http --port 8080 --backend 10.1.0.5:80,10.1.0.6:80=2
  lbctl instance create web --project demo --type http --backend 10.1.0.5:80 \\
      --health-check http:/healthz --interval 2 --check-timeout 1 --unhealthy-threshold 3
  lbctl instance create db --project demo --type tcp --port 5432 --backend 10.1.0.7:5432 --health-check tcp
  lbctl instance create web --project demo --type http --backend 10.1.0.5:80 \\
      --autoscale --min-nodes 1 --max-nodes 4 --target-rps 500 --cooldown 60
  lbctl instance create web --project demo --type http --backend 10.1.0.5:80,10.1.0.6:80 \\
      --algorithm consistent_hash --hash-on header:X-User --first-byte-timeout-ms 10000
  lbctl instance create db --project demo --type tcp --port 5432 --backend 10.1.0.7:5432 \\
      --proxy-protocol v2 --max-connections 2000 --client-idle-timeout-ms 300000
  lbctl instance create app --project demo --type http --managed-port 8000 \\
      --managed-command 'python3 -m http.server {port} --bind {address}' --min 0 --max 2 --idle-timeout 60
  lbctl instance create vmapp --project demo --type http --managed-port 80 \\
      --managed-vm-kernel /srv/vmlinuz --managed-vm-initrd /srv/initrd.img --max 1
  lbctl instance create cloud --project demo --type http --port 8776 --backend 10.1.0.5:8776 \\
      --federation federation.json";

const UPDATE_EXAMPLES: &str = "Examples:
  lbctl instance update web --project demo --backend 10.1.0.5:80,10.1.0.8:80
  lbctl instance update web --project demo --algorithm least_connections
  lbctl instance update web --project demo --backend 10.1.0.5:80=0,10.1.0.8:80
  lbctl instance update web --project demo --connect-timeout-ms 500 --max-connections 20000
  lbctl instance update web --project demo --health-check http:8081:/ready --healthy-threshold 2
  lbctl instance update web --project demo --auto-scaling false --min-nodes 2
  lbctl instance update app --project demo --managed-port 8000 \\
      --managed-command 'python3 -m http.server {port} --bind {address}' --max 3
  lbctl instance update cloud --project demo --federation federation.json
  lbctl instance update cloud --project demo --no-federation";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Projects: a subnet and the load balancers in it.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Instances: load balancers.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Users (tenants): their role, quota and token (admin only).
    #[command(subcommand, after_help = USER_EXAMPLES)]
    User(UserCmd),
    /// Who the token names: `alice (member)`.
    Whoami,
    /// The audit log: who called what, newest first (admin only).
    Audit(AuditArgs),
    /// Send a raw JSON envelope from FILE (or - for stdin) and print the answer.
    Raw {
        #[arg(default_value = "-")]
        file: String,
    },
    /// A live dashboard of every load balancer the token may see (q quits, ? for keys).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = interval)]
        interval: f64,
    },
    /// Print a shell completion script: `lbctl completions bash > /etc/bash_completion.d/lbctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// A flag taking one of a model enum's values, spelled as in the JSON; the
/// values (and their help) come from the type's schema, so a new variant
/// is a new flag value. Multi-word values also take dashes (`least-connections`),
/// as lbctl's flags always did.
fn model_enum<T>() -> impl TypedValueParser<Value = T>
where
    T: JsonSchema + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let values = enum_values(&schemars::schema_for!(T).to_value());
    PossibleValuesParser::new(values.into_iter().map(|(name, help)| {
        let dashed = name.replace('_', "-");
        let mut value = PossibleValue::new(name.clone());
        if dashed != name {
            value = value.alias(dashed);
        }
        match help {
            Some(h) => value.help(h),
            None => value,
        }
    }))
    .try_map(|s: String| {
        serde_json::from_value::<T>(Value::String(s.clone()))
            .or_else(|_| serde_json::from_value::<T>(Value::String(s.replace('-', "_"))))
            .map_err(|e| e.to_string())
    })
}

/// The values of a string enum's schema, with their descriptions: schemars
/// writes `enum` for plain variants and `oneOf` of `const` for documented ones.
pub fn enum_values(schema: &Value) -> Vec<(String, Option<String>)> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if let Some(list) = schema.get("enum").and_then(Value::as_array) {
        return list
            .iter()
            .filter_map(|v| Some((text(Some(v))?, None)))
            .collect();
    }
    schema
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((text(v.get("const"))?, text(v.get("description")))))
        .collect()
}

fn hash_on(s: &str) -> Result<HashOn, String> {
    HashOn::try_from(s.to_string()).map_err(|e| e.to_string())
}

/// One `--backend` value: `ADDRESS` or `ADDRESS=WEIGHT`; nothing for a
/// blank one (`a,,b` or a trailing comma), which lbctl always skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendArg(pub Option<BackendEntity>);

fn backend(s: &str) -> Result<BackendArg, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(BackendArg(None));
    }
    // `=` appears in no backend address (IP, IP:PORT, [V6]:PORT, http://IP:PORT/).
    Ok(BackendArg(Some(match s.split_once('=') {
        None => BackendEntity::Text(s.to_string()),
        Some((address, weight)) => BackendEntity::Object {
            address: address.trim().to_string(),
            weight: Some(
                weight
                    .trim()
                    .parse::<u32>()
                    .map(i64::from)
                    .map_err(|_| format!("{s:?}: the weight after = must be a number"))?,
            ),
        },
    })))
}

/// Health-check flags, mapped to the seed's `backend.health-check` fields.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HealthArgs {
    /// What to check: `tcp`, `http:/path` or `http:PORT:/path` [default: http:/ for http, tcp for tcp].
    #[arg(long, value_name = "SPEC", value_parser = health_spec)]
    pub health_check: Option<HealthSpec>,
    /// Seconds between checks.
    #[arg(long)]
    pub interval: Option<u32>,
    /// Seconds a check may take (at most the interval).
    #[arg(long)]
    pub check_timeout: Option<u32>,
    /// Consecutive passing checks before a member takes traffic again.
    #[arg(long)]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failing checks before a member (or node) is down.
    #[arg(long)]
    pub unhealthy_threshold: Option<u32>,
    /// HTTP statuses that pass: a range such as 200-399 (the default) or one status such as 204.
    #[arg(long, value_name = "CODES")]
    pub expected_codes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub protocol: HealthProtocol,
    pub port: Option<u16>,
    pub path: Option<String>,
}

fn health_spec(s: &str) -> Result<HealthSpec, String> {
    if s == "tcp" {
        return Ok(HealthSpec {
            protocol: HealthProtocol::Tcp,
            port: None,
            path: None,
        });
    }
    if let Some(port) = s.strip_prefix("tcp:") {
        let port = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
        return Ok(HealthSpec {
            protocol: HealthProtocol::Tcp,
            port: Some(port),
            path: None,
        });
    }
    let rest = s
        .strip_prefix("http:")
        .ok_or_else(|| format!("{s:?}: use tcp, tcp:PORT, http:/path or http:PORT:/path"))?;
    let (port, path) = match rest.split_once(':') {
        Some((port, path)) => (
            Some(port.parse().map_err(|_| format!("bad port in {s:?}"))?),
            path,
        ),
        None => (None, rest),
    };
    if !path.starts_with('/') {
        return Err(format!("{s:?}: the path must start with /"));
    }
    Ok(HealthSpec {
        protocol: HealthProtocol::Http,
        port,
        path: Some(path.to_string()),
    })
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project.
    Create {
        name: String,
        /// Owner [default: admin].
        #[arg(long)]
        user: Option<String>,
        /// IPv4 CIDR [default: allocated from lbd's pool].
        #[arg(long)]
        subnet: Option<String>,
    },
    /// List projects.
    List,
    /// Show a project and its instances.
    Info { name: String },
    /// What a project's managed backends and LB nodes ran, per instance and pool.
    Usage {
        name: String,
        /// From this date (2026-12-01, its UTC start) or RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Up to this date (its end) or RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
    },
    /// Change a project's owner.
    Update {
        name: String,
        #[arg(long)]
        user: String,
    },
    /// Delete a project.
    Delete {
        name: String,
        /// Delete its instances too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return at once instead of waiting until the load balancer serves.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the load balancer to serve.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Node count and autoscaling; given flags replace the stored values.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScalingArgs {
    /// LB nodes that serve the instance; with autoscaling, the fewest.
    #[arg(long)]
    pub min_nodes: Option<u32>,
    /// With autoscaling, the most LB nodes.
    #[arg(long)]
    pub max_nodes: Option<u32>,
    /// LB nodes kept booted and configured out of DNS, promoted at once on
    /// failover or scale-out (0: none).
    #[arg(long)]
    pub standby_nodes: Option<u32>,
    /// Turn autoscaling on or off.
    #[arg(long, conflicts_with = "autoscale")]
    pub auto_scaling: Option<bool>,
    /// Turn autoscaling on (same as --auto-scaling true).
    #[arg(long)]
    pub autoscale: bool,
    /// Autoscaling target: requests per second per node (0: not used).
    #[arg(long, visible_alias = "target-requests-per-s")]
    pub target_rps: Option<u32>,
    /// Autoscaling target: active connections per node (0: not used).
    #[arg(long)]
    pub target_connections: Option<u32>,
    /// Consecutive samples over the target before a node is added.
    #[arg(long)]
    pub scale_out_after: Option<u32>,
    /// Consecutive samples under the low-water mark before a node is removed.
    #[arg(long)]
    pub scale_in_after: Option<u32>,
    /// Percent of the target: a node is removed when the load, spread over one node fewer, stays under it.
    #[arg(long)]
    pub low_water_percent: Option<u32>,
    /// Seconds between two scaling actions.
    #[arg(long)]
    pub cooldown: Option<u32>,
}

/// How nodes hash, time out, cap connections and talk to backends; given
/// flags replace the stored values.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TuningArgs {
    /// What consistent_hash keys on: client_ip, or header:<Name> (http only).
    #[arg(long, value_name = "KEY", value_parser = hash_on)]
    pub hash_on: Option<HashOn>,
    /// Milliseconds to connect to a backend.
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<u32>,
    /// Milliseconds from sending a request to the first byte of the answer (http).
    #[arg(long, value_name = "MS")]
    pub first_byte_timeout_ms: Option<u32>,
    /// Milliseconds a client connection may idle before it is closed.
    #[arg(long, value_name = "MS")]
    pub client_idle_timeout_ms: Option<u32>,
    /// Milliseconds a pooled backend connection may idle before it is closed.
    #[arg(long, value_name = "MS")]
    pub backend_idle_timeout_ms: Option<u32>,
    /// Milliseconds a new client connection has to send its first request head.
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u32>,
    /// Client connections one node serves at once; more are refused.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Largest request head in bytes (http); larger ones get 431.
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<u32>,
    /// PROXY protocol header towards the backends (tcp only).
    #[arg(long, value_name = "VERSION", value_parser = model_enum::<ProxyProtocol>())]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// How members are spoken to (http, https, smtp): every pool that
    /// names none of its own [default: http1].
    #[arg(long, value_name = "PROTOCOL", value_parser = model_enum::<BackendProtocol>())]
    pub backend_protocol: Option<BackendProtocol>,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Create a load balancer and wait until it serves.
    #[command(after_help = CREATE_EXAMPLES)]
    Create(Box<CreateArgs>),
    /// List a project's load balancers.
    List {
        #[arg(long)]
        project: String,
    },
    /// Show a load balancer: nodes, backends, DNS name, URL, events.
    Info {
        name: String,
        #[arg(long)]
        project: String,
    },
    /// List a load balancer's managed backends: state, address, uptime, last activity.
    Backends {
        name: String,
        #[arg(long)]
        project: String,
    },
    /// Change a load balancer in place: backends, port, algorithm, health
    /// check, scaling, timeouts, limits.
    #[command(after_help = UPDATE_EXAMPLES)]
    Update(Box<UpdateArgs>),
    /// Show a load balancer's monitor log: events (failovers, scaling,
    /// node starts and exits) of the last minutes, oldest first.
    Events {
        name: String,
        #[arg(long)]
        project: String,
        /// How far back, in minutes.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=527_040))]
        minutes: u32,
    },
    /// Delete a load balancer.
    Delete {
        name: String,
        #[arg(long)]
        project: String,
    },
    /// Named pools of an http load balancer (besides `default`, its backends).
    #[command(subcommand, after_help = POOL_EXAMPLES)]
    Pool(PoolCmd),
    /// Routing rules of an http load balancer, in order: the first match wins.
    #[command(subcommand, after_help = RULE_EXAMPLES)]
    Rule(RuleCmd),
    /// The whole L7 policy (pools, rules, auth, rate limits).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Certificates of an https load balancer (SNI: one per name).
    #[command(subcommand, after_help = CERT_EXAMPLES)]
    Cert(tls::CertCmd),
    /// Replace the whole L7 policy with FILE's (JSON, as `policy show -o json`
    /// prints it; `-` for stdin): what it leaves out is removed.
    Apply(ApplyArgs),
    /// Federation mappings of an instance with a `federation`: where
    /// resources live, and tokens mapped to each provider's.
    #[command(subcommand, after_help = mapping::MAPPING_EXAMPLES)]
    Mapping(mapping::MappingCmd),
}

const CERT_EXAMPLES: &str = "Examples:
  lbctl instance cert add --instance web --project demo --cert b.pem --key b.key
  lbctl instance cert add --instance web --project demo --self-signed
  lbctl instance cert list --instance web --project demo
  lbctl instance cert remove b.example --instance web --project demo";

const POOL_EXAMPLES: &str = "Examples:
  lbctl instance pool add api --instance web --project demo --backend 10.1.0.7:8080,10.1.0.8:8080
  lbctl instance pool add api --instance web --project demo --backend 10.1.0.7:8080 \\
      --algorithm least_connections --health-check http:/healthz
  lbctl instance pool list --instance web --project demo
  lbctl instance pool remove api --instance web --project demo";

const RULE_EXAMPLES: &str = "Examples:
  lbctl instance rule add api --instance web --project demo --path-prefix /api/ --to api --strip-prefix
  lbctl instance rule add old --instance web --project demo --path-prefix /old/ --redirect https://new.example/ --code 301
  lbctl instance rule add admin --instance web --project demo --path-prefix /admin --reject 403
  lbctl instance rule add beta --instance web --project demo --host '*.example.com' --header X-Env=beta --to beta
  lbctl instance rule move admin --before api --instance web --project demo
  lbctl instance rule list --instance web --project demo";

/// Which load balancer a policy command changes.
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// The load balancer's name.
    #[arg(long)]
    pub instance: String,
    #[arg(long)]
    pub project: String,
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Add a named pool.
    Add(Box<PoolAddArgs>),
    /// Remove a pool (no rule may still send to it).
    Remove {
        name: String,
        #[command(flatten)]
        target: InstanceArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the pools.
    List {
        #[command(flatten)]
        target: InstanceArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct PoolAddArgs {
    pub name: String,
    #[command(flatten)]
    pub target: InstanceArgs,
    /// Member IP:PORT or IP:PORT=WEIGHT; repeat it or separate with commas.
    #[arg(long = "backend", required = true, value_delimiter = ',', value_parser = backend)]
    pub backends: Vec<BackendArg>,
    /// How nodes pick a member of this pool [default: round_robin].
    #[arg(long, value_parser = model_enum::<Algorithm>())]
    pub algorithm: Option<Algorithm>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub sticky: StickyArgs,
    /// How this pool's members are spoken to [default: the instance's].
    #[arg(long, value_name = "PROTOCOL", value_parser = model_enum::<BackendProtocol>())]
    pub backend_protocol: Option<BackendProtocol>,
    #[command(flatten)]
    pub backend_tls: backend_tls::BackendTlsArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Add a rule (at the end, or --before another).
    Add(Box<RuleAddArgs>),
    /// Remove a rule.
    Remove {
        name: String,
        #[command(flatten)]
        target: InstanceArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Move a rule before another one, or to the end.
    Move {
        name: String,
        /// The rule it goes before.
        #[arg(long, required_unless_present = "last")]
        before: Option<String>,
        /// To the end of the list.
        #[arg(long, conflicts_with = "before")]
        last: bool,
        #[command(flatten)]
        target: InstanceArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the rules in the order they are tried.
    List {
        #[command(flatten)]
        target: InstanceArgs,
    },
}

/// `rule add`: what the rule matches (all given conditions), and exactly
/// one action.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true)
    .args(["to", "redirect", "reject", "respond_status"])))]
pub struct RuleAddArgs {
    pub name: String,
    #[command(flatten)]
    pub target: InstanceArgs,
    /// Insert before this rule [default: at the end].
    #[arg(long)]
    pub before: Option<String>,
    /// Host, exact or `*.suffix`.
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long, value_name = "PREFIX")]
    pub path_prefix: Option<String>,
    #[arg(long, value_name = "REGEX")]
    pub path_regex: Option<String>,
    /// Methods; repeat it or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub method: Vec<String>,
    /// A header NAME=VALUE that must be present (VALUE `*`: any value); repeatable.
    #[arg(long, value_name = "NAME=VALUE", value_parser = pair)]
    pub header: Vec<(String, String)>,
    /// A cookie NAME=VALUE (VALUE `*`: any value); repeatable.
    #[arg(long, value_name = "NAME=VALUE", value_parser = pair)]
    pub cookie: Vec<(String, String)>,
    /// Client address in this CIDR; repeat it or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub source_cidr: Vec<String>,
    /// Action: send to this pool (`default`: the instance's backends).
    #[arg(long, value_name = "POOL")]
    pub to: Option<String>,
    /// With --to and --path-prefix: the pool sees the path without the prefix.
    #[arg(long, requires = "to")]
    pub strip_prefix: bool,
    /// Action: redirect to this URL (or /path).
    #[arg(long, value_name = "URL")]
    pub redirect: Option<String>,
    /// The redirect's status: 301, 302 (default), 307 or 308.
    #[arg(long, requires = "redirect")]
    pub code: Option<u16>,
    /// Action: answer with this status (400-599).
    #[arg(long, value_name = "STATUS")]
    pub reject: Option<u16>,
    /// Action: answer with this status and --respond-body.
    #[arg(long, value_name = "STATUS")]
    pub respond_status: Option<u16>,
    #[arg(long, value_name = "TEXT", requires = "respond_status")]
    pub respond_body: Option<String>,
    #[arg(long, value_name = "TYPE", requires = "respond_status")]
    pub respond_content_type: Option<String>,
    /// A header NAME=VALUE set toward the backend; repeatable.
    #[arg(long, value_name = "NAME=VALUE", value_parser = pair)]
    pub set_header: Vec<(String, String)>,
    /// A header removed toward the backend; repeatable.
    #[arg(long, value_name = "NAME")]
    pub remove_header: Vec<String>,
    /// A public path: no auth, even when the instance has one.
    #[arg(long)]
    pub public: bool,
    /// The caller must be in each of these groups; repeat it or separate with commas.
    #[arg(long = "require-group", value_delimiter = ',')]
    pub require_groups: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Show the whole policy; `-o json` prints what `apply -f` takes.
    Show {
        #[command(flatten)]
        target: InstanceArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: InstanceArgs,
    /// The policy as JSON (`-`: stdin).
    #[arg(short, long)]
    pub file: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `instance create`: one flag per field of the API's `create instance`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long)]
    pub project: String,
    /// What the load balancer carries.
    #[arg(long = "type", value_parser = model_enum::<TrafficType>())]
    pub traffic_type: TrafficType,
    /// Listener port [default: 80 for http].
    #[arg(long)]
    pub port: Option<u16>,
    /// The subnet the nodes' addresses come from, inside the project's [default: the project's].
    #[arg(long)]
    pub subnet: Option<String>,
    /// Backend IP:PORT, or IP:PORT=WEIGHT (0 to 256, default 1; 0 drains); repeat it or separate with commas.
    #[arg(long = "backend", value_delimiter = ',', value_parser = backend,
          required_unless_present_any = ["managed_command", "managed_vm_kernel"],
          conflicts_with = "managed_template")]
    pub backends: Vec<BackendArg>,
    /// How nodes pick a backend [default: round_robin].
    #[arg(long, value_parser = model_enum::<Algorithm>())]
    pub algorithm: Option<Algorithm>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub scaling: ScalingArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub managed: ManagedArgs,
    #[command(flatten)]
    pub sticky: StickyArgs,
    #[command(flatten)]
    pub backend_tls: backend_tls::BackendTlsArgs,
    #[command(flatten)]
    pub smtp: SmtpArgs,
    #[command(flatten)]
    pub tls: tls::TlsArgs,
    /// Federation routing across providers (http, https): the `federation`
    /// object as JSON in FILE (`-`: stdin).
    #[arg(long, value_name = "FILE", value_parser = federation::federation_file)]
    pub federation: Option<lbaas::model::federation::FederationSpec>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `instance update`: one flag per field of the API's `update instance`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    pub name: String,
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub port: Option<u16>,
    /// Backend IP:PORT or IP:PORT=WEIGHT (replaces the list); repeat it or separate with commas.
    #[arg(long = "backend", value_delimiter = ',', value_parser = backend)]
    pub backends: Vec<BackendArg>,
    /// How nodes pick a backend.
    #[arg(long, value_parser = model_enum::<Algorithm>())]
    pub algorithm: Option<Algorithm>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub scaling: ScalingArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub managed: ManagedArgs,
    #[command(flatten)]
    pub sticky: StickyArgs,
    #[command(flatten)]
    pub backend_tls: backend_tls::BackendTlsArgs,
    #[command(flatten)]
    pub smtp: SmtpArgs,
    #[command(flatten)]
    pub tls: tls::TlsArgs,
    #[command(flatten)]
    pub federation: federation::FederationUpdateArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

const USER_EXAMPLES: &str = "Examples:
  lbctl user create alice --role member --max-projects 2 --max-instances 10
  lbctl user update alice --max-nodes -1        (-1: unlimited)
  lbctl user rotate-token alice";

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; prints its token on stdout, the only time it is shown.
    #[command(after_help = USER_EXAMPLES)]
    Create {
        name: String,
        /// What the user may do [default: member].
        #[arg(long, value_parser = model_enum::<Role>())]
        role: Option<Role>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List users with their usage and limits.
    List,
    /// Show a user.
    Info { name: String },
    /// Change a user's role or limits (given flags replace the stored values).
    #[command(after_help = USER_EXAMPLES)]
    Update {
        name: String,
        #[arg(long, value_parser = model_enum::<Role>())]
        role: Option<Role>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Give a user a new token (printed once); the old one stops working at once.
    RotateToken { name: String },
    /// Delete a user (refused while it owns projects).
    Delete { name: String },
}

/// A user's limits; `-1` is unlimited, an absent flag keeps lbd's value
/// (its default on create).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QuotaArgs {
    /// Projects the user may own (-1: unlimited).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = limit)]
    pub max_projects: Option<Limit>,
    /// Instances in all its projects (-1: unlimited).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = limit)]
    pub max_instances: Option<Limit>,
    /// LB nodes its instances may cost: min nodes, or max nodes with
    /// autoscaling (-1: unlimited).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = limit)]
    pub max_nodes: Option<Limit>,
}

fn limit(s: &str) -> Result<Limit, String> {
    let v: i64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number (-1 for unlimited)"))?;
    Limit::from_wire(v).map_err(|e| e.to_string())
}

/// `audit`: the filters of the API's `info audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Only this user's calls.
    #[arg(long)]
    pub user: Option<String>,
    /// Only the last N minutes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=527_040))]
    pub minutes: Option<u32>,
    /// At most N entries [default: lbd's, 100].
    #[arg(long, value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(lbaas::model::audit::MAX_AUDIT_LIMIT)))]
    pub limit: Option<u32>,
}
