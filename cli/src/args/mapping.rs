//! `instance mapping add|list|remove` (issue 18): the federation mappings
//! of an instance, injected ahead of time, listed, or removed. Which flags
//! a `--kind` takes is checked by `commands::mapping` (clap cannot make a
//! flag required or refused by another's value and an alternative at once).

use std::fmt;

use lbaas::model::mapping::MappingKind;

use super::{model_enum, InstanceArgs};

/// A token given on the command line. `Debug` hides it, so no error,
/// test failure or log line shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_string()))
}

pub const MAPPING_EXAMPLES: &str = "Examples:
  lbctl instance mapping add --instance web --project demo --kind resource --type volumes --id v1 --provider sp2
  lbctl instance mapping add --instance web --project demo --kind token --local-token-file alice.token \\
      --local-project alice --provider sp1 --remote-token-file sp1.token --remote-project sp1-alice
  lbctl instance mapping list --instance web --project demo [--kind resource|token]
  lbctl instance mapping remove --instance web --project demo --kind resource --type volumes --id v1
  lbctl instance mapping remove --instance web --project demo --kind token --local-token-file alice.token \\
      --local-project alice --provider sp1

Tokens given with --local-token/--remote-token show in `ps`: prefer the
--*-token-file flags (`-` reads stdin, for one of the two).";

#[derive(Debug, clap::Subcommand)]
pub enum MappingCmd {
    /// Inject a mapping: where a resource lives (`--kind resource`), or a
    /// local token and project's remote ones on a provider (`--kind token`).
    Add(Box<MappingAddArgs>),
    /// List the mappings: resources (learned and injected) and tokens
    /// (a hash prefix of the local token; no token is ever shown).
    List {
        #[command(flatten)]
        target: InstanceArgs,
        /// Only this kind [default: both].
        #[arg(long, value_parser = model_enum::<MappingKind>())]
        kind: Option<MappingKind>,
    },
    /// Remove a mapping: a resource's by `--type` and `--id`, a token's by
    /// its local token, local project and provider.
    Remove(Box<MappingRemoveArgs>),
}

/// Which resource (`--kind resource`).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ResourceKeyArgs {
    /// The resource's type, as in the paths (`volumes`).
    #[arg(long = "type", value_name = "TYPE")]
    pub resource_type: Option<String>,
    /// The resource's id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

/// The local side of a token mapping (`--kind token`).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct LocalTokenArgs {
    /// The token clients send (visible in `ps`: prefer --local-token-file).
    #[arg(long, value_name = "TOKEN", value_parser = secret, conflicts_with = "local_token_file")]
    pub local_token: Option<Secret>,
    /// Read the local token from FILE (`-`: stdin); surrounding whitespace is dropped.
    #[arg(long, value_name = "FILE")]
    pub local_token_file: Option<String>,
    /// The project clients name in the path.
    #[arg(long, value_name = "PROJECT")]
    pub local_project: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MappingAddArgs {
    #[command(flatten)]
    pub target: InstanceArgs,
    /// What the mapping maps.
    #[arg(long, value_parser = model_enum::<MappingKind>())]
    pub kind: MappingKind,
    #[command(flatten)]
    pub key: ResourceKeyArgs,
    /// The provider (of the instance's `federation.providers`).
    #[arg(long)]
    pub provider: String,
    #[command(flatten)]
    pub local: LocalTokenArgs,
    /// The provider's token for it (visible in `ps`: prefer --remote-token-file).
    #[arg(long, value_name = "TOKEN", value_parser = secret, conflicts_with = "remote_token_file")]
    pub remote_token: Option<Secret>,
    /// Read the remote token from FILE (`-`: stdin); surrounding whitespace is dropped.
    #[arg(long, value_name = "FILE")]
    pub remote_token_file: Option<String>,
    /// The provider's project, put in the path in place of the local one.
    #[arg(long, value_name = "PROJECT")]
    pub remote_project: Option<String>,
    /// When the token mapping ends, in Unix seconds [default: when removed].
    #[arg(long, value_name = "UNIX")]
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MappingRemoveArgs {
    #[command(flatten)]
    pub target: InstanceArgs,
    /// What the mapping maps.
    #[arg(long, value_parser = model_enum::<MappingKind>())]
    pub kind: MappingKind,
    #[command(flatten)]
    pub key: ResourceKeyArgs,
    /// The provider: a token mapping's (required); a resource's may be named.
    #[arg(long)]
    pub provider: Option<String>,
    #[command(flatten)]
    pub local: LocalTokenArgs,
}
