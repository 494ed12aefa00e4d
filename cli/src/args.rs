//! The command line of `lbctl` (clap derive).

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about = "Command-line client for lbaas", after_help = EXAMPLES)]
pub struct Cli {
    /// lbd's API address.
    #[arg(
        long,
        global = true,
        env = "LBAAS_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
    /// API token [default: the admin.token in lbd's default state dir].
    #[arg(long, global = true, env = "LBAAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  lbctl project create demo --user john
  lbctl instance create web --project demo --type http --port 8080 --backend 10.1.0.5:80 --backend 10.1.0.6:80
  lbctl instance info web --project demo -o json
  echo '{\"action\": \"info\", \"type\": \"project\"}' | lbctl raw -

Exit codes: 0 ok, 1 the API refused or the instance failed, 2 usage, 3 cannot reach lbd.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Projects: a subnet and the load balancers in it.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Instances: load balancers.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Send a raw JSON envelope from FILE (or - for stdin) and print the answer.
    Raw {
        #[arg(default_value = "-")]
        file: String,
    },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrafficType {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    PowerOfTwo,
    ConsistentHash,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::PowerOfTwo => "power_of_two",
            Self::ConsistentHash => "consistent_hash",
        }
    }
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
    /// Turn autoscaling on or off.
    #[arg(long)]
    pub auto_scaling: Option<bool>,
    /// Autoscaling target: requests per second per node (0: not used).
    #[arg(long)]
    pub target_rps: Option<u32>,
    /// Autoscaling target: active connections per node (0: not used).
    #[arg(long)]
    pub target_connections: Option<u32>,
    /// Seconds between two scaling actions.
    #[arg(long)]
    pub cooldown: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Create a load balancer and wait until it serves.
    Create {
        name: String,
        #[arg(long)]
        project: String,
        #[arg(long = "type", value_enum)]
        traffic_type: TrafficType,
        /// Listener port [default: 80 for http].
        #[arg(long)]
        port: Option<u16>,
        /// Backend IP:PORT; repeat it or separate with commas.
        #[arg(long = "backend", required = true, value_delimiter = ',')]
        backends: Vec<String>,
        /// How nodes pick a backend [default: round-robin].
        #[arg(long, value_enum)]
        algorithm: Option<Algorithm>,
        #[command(flatten)]
        scaling: ScalingArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
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
    /// Change a load balancer's backends or port, in place.
    Update {
        name: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        port: Option<u16>,
        /// Backend IP:PORT (replaces the list); repeat it or separate with commas.
        #[arg(long = "backend", value_delimiter = ',')]
        backends: Vec<String>,
        /// How nodes pick a backend.
        #[arg(long, value_enum)]
        algorithm: Option<Algorithm>,
        #[command(flatten)]
        scaling: ScalingArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
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
}
