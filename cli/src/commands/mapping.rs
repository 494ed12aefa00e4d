//! `instance mapping add|list|remove` (issue 18): each sends one `mapping`
//! envelope (`create`, `info`, `delete`) whose `info` is the model's
//! [`MappingRequest`]. lbctl refuses, as usage errors before anything is
//! sent, a flag a `--kind` needs but lacks or does not take; what the values
//! hold (a `/` in an id, an unknown provider) is lbd's to judge, with its
//! codes. Tokens are read from the flags or their files and go only into
//! the request: never into a message, and lbd never sends one back.

use lbaas::model::mapping::{
    MappingKind, MappingRequest, MappingSource, MappingsInfo, TokenMappingView,
};
use lbaas::model::{Action, ObjectType};

use super::{envelope, Request, Shape};
use crate::args::mapping::{
    LocalTokenArgs, MappingAddArgs, MappingCmd, MappingRemoveArgs, ResourceKeyArgs, Secret,
};
use crate::args::{Command, InstanceCmd};

/// A mapping command lbctl refuses before sending anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("--kind {kind} needs {flag}")]
    Missing {
        kind: &'static str,
        flag: &'static str,
    },
    #[error("{flag} does not apply to --kind {kind}")]
    NotForKind {
        kind: &'static str,
        flag: &'static str,
    },
    #[error("--local-token-file and --remote-token-file cannot both be - (stdin holds one token)")]
    BothStdin,
    #[error("{flag} {}: {reason}", shown(path))]
    Read {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("{flag} {}: no token in it", shown(path))]
    Empty { flag: &'static str, path: String },
}

/// A token file's path as messages show it.
fn shown(path: &str) -> &str {
    if path == "-" {
        "- (stdin)"
    } else {
        path
    }
}

impl MappingError {
    /// The kind of usage error clap prints it as (all exit 2).
    pub fn usage_kind(&self) -> clap::error::ErrorKind {
        use clap::error::ErrorKind as K;
        match self {
            Self::Missing { .. } => K::MissingRequiredArgument,
            Self::NotForKind { .. } | Self::BothStdin => K::ArgumentConflict,
            Self::Read { .. } | Self::Empty { .. } => K::ValueValidation,
        }
    }
}

/// Reads a token file (`-`: stdin), as [`request`] takes it.
pub fn read_file(path: &str) -> std::io::Result<String> {
    if path == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
}

/// The request of a mapping command (`None` for every other command), its
/// token files read with `read`.
pub fn request(
    cmd: &Command,
    read: &mut dyn FnMut(&str) -> std::io::Result<String>,
) -> Option<Result<Request, MappingError>> {
    let Command::Instance(InstanceCmd::Mapping(cmd)) = cmd else {
        return None;
    };
    let built = match cmd {
        MappingCmd::Add(a) => add(a, read).map(|info| (Action::Create, info)),
        MappingCmd::Remove(a) => remove(a, read).map(|info| (Action::Delete, info)),
        MappingCmd::List { target, kind } => Ok((
            Action::Info,
            MappingRequest {
                project: target.project.clone(),
                instance: target.instance.clone(),
                kind: *kind,
                ..MappingRequest::default()
            },
        )),
    };
    let shape = match cmd {
        MappingCmd::List { .. } => Shape::Mappings,
        MappingCmd::Add(_) | MappingCmd::Remove(_) => Shape::MappingChange,
    };
    Some(built.map(|(action, info)| Request {
        envelope: envelope(action, ObjectType::Mapping, &info),
        shape,
    }))
}

/// The `--type`/`--id` flags, and whether each was given.
fn resource_flags(key: &ResourceKeyArgs) -> Vec<(&'static str, bool)> {
    vec![
        ("--type", key.resource_type.is_some()),
        ("--id", key.id.is_some()),
    ]
}

/// The `--local-*` flags, and whether each was given.
fn local_flags(local: &LocalTokenArgs) -> Vec<(&'static str, bool)> {
    vec![
        ("--local-token", local.local_token.is_some()),
        ("--local-token-file", local.local_token_file.is_some()),
        ("--local-project", local.local_project.is_some()),
    ]
}

/// Refuses the first given flag of those only the other kind takes.
fn only_own(
    kind: MappingKind,
    resource_only: &[(&'static str, bool)],
    token_only: &[(&'static str, bool)],
) -> Result<(), MappingError> {
    let foreign = match kind {
        MappingKind::Resource => token_only,
        MappingKind::Token => resource_only,
    };
    match foreign.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(MappingError::NotForKind {
            kind: kind.as_str(),
            flag,
        }),
        None => Ok(()),
    }
}

fn need<T: Clone>(kind: MappingKind, flag: &'static str, v: &Option<T>) -> Result<T, MappingError> {
    v.clone().ok_or(MappingError::Missing {
        kind: kind.as_str(),
        flag,
    })
}

/// The flags of one token: how the missing one is named, and its file's.
struct TokenFlags {
    either: &'static str,
    file: &'static str,
}

const LOCAL: TokenFlags = TokenFlags {
    either: "--local-token or --local-token-file",
    file: "--local-token-file",
};
const REMOTE: TokenFlags = TokenFlags {
    either: "--remote-token or --remote-token-file",
    file: "--remote-token-file",
};

/// A token from its flag or its file (not both: clap refuses that).
fn token(
    kind: MappingKind,
    flags: TokenFlags,
    inline: &Option<Secret>,
    file: &Option<String>,
    read: &mut dyn FnMut(&str) -> std::io::Result<String>,
) -> Result<String, MappingError> {
    if let Some(Secret(t)) = inline {
        return Ok(t.clone());
    }
    let path = need(kind, flags.either, file)?;
    let text = read(&path).map_err(|e| MappingError::Read {
        flag: flags.file,
        path: path.clone(),
        reason: e.to_string(),
    })?;
    match text.trim() {
        "" => Err(MappingError::Empty {
            flag: flags.file,
            path,
        }),
        t => Ok(t.to_string()),
    }
}

fn base(target: &crate::args::InstanceArgs, kind: MappingKind) -> MappingRequest {
    MappingRequest {
        project: target.project.clone(),
        instance: target.instance.clone(),
        kind: Some(kind),
        ..MappingRequest::default()
    }
}

fn add(
    a: &MappingAddArgs,
    read: &mut dyn FnMut(&str) -> std::io::Result<String>,
) -> Result<MappingRequest, MappingError> {
    let kind = a.kind;
    let mut token_only = local_flags(&a.local);
    token_only.extend([
        ("--remote-token", a.remote_token.is_some()),
        ("--remote-token-file", a.remote_token_file.is_some()),
        ("--remote-project", a.remote_project.is_some()),
        ("--expires-at", a.expires_at.is_some()),
    ]);
    only_own(kind, &resource_flags(&a.key), &token_only)?;
    let base = MappingRequest {
        provider: Some(a.provider.clone()),
        ..base(&a.target, kind)
    };
    match kind {
        MappingKind::Resource => Ok(MappingRequest {
            resource_type: Some(need(kind, "--type", &a.key.resource_type)?),
            id: Some(need(kind, "--id", &a.key.id)?),
            ..base
        }),
        MappingKind::Token => {
            if a.local.local_token_file.as_deref() == Some("-")
                && a.remote_token_file.as_deref() == Some("-")
            {
                return Err(MappingError::BothStdin);
            }
            // Plain flags first: a usage error before any file is read.
            let local_project = need(kind, "--local-project", &a.local.local_project)?;
            let remote_project = need(kind, "--remote-project", &a.remote_project)?;
            let local_token = token(
                kind,
                LOCAL,
                &a.local.local_token,
                &a.local.local_token_file,
                read,
            )?;
            let remote_token = token(kind, REMOTE, &a.remote_token, &a.remote_token_file, read)?;
            Ok(MappingRequest {
                local_token: Some(local_token),
                local_project: Some(local_project),
                remote_token: Some(remote_token),
                remote_project: Some(remote_project),
                expires_at: a.expires_at,
                ..base
            })
        }
    }
}

fn remove(
    a: &MappingRemoveArgs,
    read: &mut dyn FnMut(&str) -> std::io::Result<String>,
) -> Result<MappingRequest, MappingError> {
    let kind = a.kind;
    only_own(kind, &resource_flags(&a.key), &local_flags(&a.local))?;
    let base = MappingRequest {
        provider: a.provider.clone(),
        ..base(&a.target, kind)
    };
    match kind {
        MappingKind::Resource => Ok(MappingRequest {
            resource_type: Some(need(kind, "--type", &a.key.resource_type)?),
            id: Some(need(kind, "--id", &a.key.id)?),
            ..base
        }),
        MappingKind::Token => {
            let local_project = need(kind, "--local-project", &a.local.local_project)?;
            need(kind, "--provider", &a.provider)?;
            let local_token = token(
                kind,
                LOCAL,
                &a.local.local_token,
                &a.local.local_token_file,
                read,
            )?;
            Ok(MappingRequest {
                local_token: Some(local_token),
                local_project: Some(local_project),
                ..base
            })
        }
    }
}

/// What `add` and `remove` print: the change, and the instance's mappings
/// version after it (when lbd's answer gives it).
pub fn change_text(cmd: &MappingCmd, version: Option<u64>) -> String {
    let change = match cmd {
        MappingCmd::Add(a) => format!("added {}", added(a)),
        MappingCmd::Remove(a) => format!("removed {}", removed(a)),
        MappingCmd::List { .. } => return String::new(),
    };
    match version {
        Some(v) => format!("{change} (mappings version {v})\n"),
        None => format!("{change}\n"),
    }
}

fn added(a: &MappingAddArgs) -> String {
    match a.kind {
        MappingKind::Resource => format!(
            "resource mapping {}/{} -> {}",
            a.key.resource_type.as_deref().unwrap_or("?"),
            a.key.id.as_deref().unwrap_or("?"),
            a.provider
        ),
        MappingKind::Token => format!(
            "token mapping of project {} -> {} project {}",
            a.local.local_project.as_deref().unwrap_or("?"),
            a.provider,
            a.remote_project.as_deref().unwrap_or("?")
        ),
    }
}

fn removed(a: &MappingRemoveArgs) -> String {
    match a.kind {
        MappingKind::Resource => format!(
            "resource mapping {}/{}",
            a.key.resource_type.as_deref().unwrap_or("?"),
            a.key.id.as_deref().unwrap_or("?")
        ),
        MappingKind::Token => format!(
            "token mapping of project {} on {}",
            a.local.local_project.as_deref().unwrap_or("?"),
            a.provider.as_deref().unwrap_or("?")
        ),
    }
}

/// `mapping list`: the resources' table and the tokens' (only `kind`'s
/// when given).
pub fn list_text(info: &MappingsInfo, kind: Option<MappingKind>, now: i64) -> String {
    let mut out = format!("mappings of {} (version {})\n", info.instance, info.version);
    if !info.nodes.is_empty() {
        let nodes: Vec<String> = info
            .nodes
            .iter()
            .map(|n| match n.mappings_version {
                Some(v) => format!("{} at {v}", n.address),
                None => format!("{} not pushed yet", n.address),
            })
            .collect();
        out.push_str(&format!("nodes: {}\n", nodes.join(", ")));
    }
    if kind != Some(MappingKind::Token) {
        out.push_str(&resources_text(info));
    }
    if kind != Some(MappingKind::Resource) {
        if kind.is_none() {
            out.push('\n');
        }
        out.push_str(&tokens_text(&info.tokens, now));
    }
    out
}

fn resources_text(info: &MappingsInfo) -> String {
    if info.resources.is_empty() {
        return "no resource mappings\n".into();
    }
    let rows: Vec<Vec<String>> = info
        .resources
        .iter()
        .map(|r| {
            vec![
                r.resource_type.clone(),
                r.id.clone(),
                r.provider.clone(),
                source(r.source).to_string(),
                r.updated_at.clone(),
            ]
        })
        .collect();
    crate::output::table(&["TYPE", "ID", "PROVIDER", "SOURCE", "UPDATED"], &rows)
}

fn source(s: MappingSource) -> &'static str {
    match s {
        MappingSource::Injected => "injected",
        MappingSource::Learned => "learned",
    }
}

/// 9999-12-31T23:59:59Z: a later `expires_at` is shown as that.
const LAST_SECOND: i64 = 253_402_300_799;

fn tokens_text(tokens: &[TokenMappingView], now: i64) -> String {
    if tokens.is_empty() {
        return "no token mappings\n".into();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let expires = match t.expires_at {
                None => "never".to_string(),
                Some(at) => {
                    let at = i64::try_from(at).unwrap_or(i64::MAX).min(LAST_SECOND);
                    let when = lbaas::model::time::rfc3339_secs(at);
                    if at <= now {
                        format!("{when} (expired)")
                    } else {
                        when
                    }
                }
            };
            vec![
                format!("sha256:{}", t.local_token_sha256_prefix),
                t.local_project.clone(),
                t.provider.clone(),
                t.remote_project.clone(),
                expires,
            ]
        })
        .collect();
    crate::output::table(
        &[
            "LOCAL TOKEN",
            "LOCAL PROJECT",
            "PROVIDER",
            "REMOTE PROJECT",
            "EXPIRES",
        ],
        &rows,
    )
}
