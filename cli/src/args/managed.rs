//! The managed-backend flags of `instance create` and `instance update`
//! (issue 16): they set `backend.managed`, with compute `process`
//! (`--managed-command`) or `vm` (`--managed-vm-kernel`).

/// Managed backends: lbd starts the default pool's members on demand.
/// Every flag but the template needs `--managed-command` or
/// `--managed-vm-kernel`: on update they replace the whole stored `managed`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
#[command(group(clap::ArgGroup::new("managed_template")
    .args(["managed_command", "managed_vm_kernel"])))]
pub struct ManagedArgs {
    /// Run this command per backend (split like a shell would); {address},
    /// {port}, {resource} and {instance} are filled in, e.g.
    /// 'python3 -m http.server {port} --bind {address}'.
    #[arg(long, value_name = "COMMAND", value_parser = command_line)]
    pub managed_command: Option<CommandLine>,
    /// Port the backends listen on.
    #[arg(long, value_name = "PORT", requires = "managed_template")]
    pub managed_port: Option<u16>,
    /// Environment of the backend process, KEY=VALUE (repeat it).
    #[arg(long, value_name = "KEY=VALUE", value_parser = env_var, requires = "managed_command")]
    pub managed_env: Vec<(String, String)>,
    /// Working directory of the backend process.
    #[arg(long, value_name = "DIR", requires = "managed_command")]
    pub managed_cwd: Option<String>,
    /// Backends kept running when idle [default: 0].
    #[arg(long, value_name = "N", requires = "managed_template")]
    pub min: Option<u32>,
    /// Most backends started [default: 1].
    #[arg(long, value_name = "N", requires = "managed_template")]
    pub max: Option<u32>,
    /// Requests in flight per ready backend before another starts [default: 100].
    #[arg(long, value_name = "N", requires = "managed_template")]
    pub target_in_flight: Option<u32>,
    /// Seconds without requests and open connections before a backend stops [default: 300].
    #[arg(long, value_name = "SECONDS", requires = "managed_template")]
    pub idle_timeout: Option<u32>,
    /// Seconds a started backend has to become ready [default: 30].
    #[arg(long, value_name = "SECONDS", requires = "managed_template")]
    pub start_timeout: Option<u32>,
    /// Requests a node holds while no backend is ready [default: 1000].
    #[arg(long, value_name = "N", requires = "managed_template")]
    pub queue_max: Option<u32>,
    /// Milliseconds a held request waits before 504 [default: 30000].
    #[arg(long, value_name = "MS", requires = "managed_template")]
    pub queue_max_wait_ms: Option<u32>,
    /// Run a VM per backend, booting this kernel (a path on lbd's host).
    #[arg(long, value_name = "PATH", conflicts_with = "managed_command")]
    pub managed_vm_kernel: Option<String>,
    /// The VM's initrd (a path on lbd's host).
    #[arg(long, value_name = "PATH", requires = "managed_vm_kernel")]
    pub managed_vm_initrd: Option<String>,
    /// The VM's kernel command line (placeholders are filled in).
    #[arg(long, value_name = "CMDLINE", requires = "managed_vm_kernel")]
    pub managed_vm_cmdline: Option<String>,
    /// The VM's memory in MiB [default: 128].
    #[arg(long, value_name = "MIB", requires = "managed_vm_kernel")]
    pub managed_vm_memory_mb: Option<u32>,
    /// A backend per resource id, taken from this path segment (1-based):
    /// `per_resource.path_segment`.
    #[arg(long, value_name = "N", requires = "managed_template")]
    pub per_resource_segment: Option<u16>,
    /// The path segment holding the seed's groups (stripped, never trusted):
    /// `per_resource.groups_segment`.
    #[arg(long, value_name = "N", requires = "per_resource_segment")]
    pub per_resource_groups_segment: Option<u16>,
    /// Most resources with backends at once [default: 100]: `per_resource.max_resources`.
    #[arg(long, value_name = "N", requires = "per_resource_segment")]
    pub per_resource_max: Option<u32>,
    /// A listed resource, with the groups a caller needs (repeat it):
    /// `r1`, or `r1:admins,ops`. With none listed, any valid id is allowed.
    #[arg(long = "per-resource", value_name = "ID[:GROUPS]", value_parser = resource,
          requires = "per_resource_segment")]
    pub per_resource: Vec<(String, Vec<String>)>,
}

fn resource(s: &str) -> Result<(String, Vec<String>), String> {
    let (id, groups) = s.split_once(':').unwrap_or((s, ""));
    if id.is_empty() {
        return Err(format!("{s:?}: expected ID or ID:GROUP,GROUP"));
    }
    let groups = groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    Ok((id.to_string(), groups))
}

/// A command line, split into the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

fn command_line(s: &str) -> Result<CommandLine, String> {
    let words = split(s).ok_or_else(|| format!("{s:?}: unbalanced quotes"))?;
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(CommandLine(words))
}

/// Splits like a POSIX shell would (quotes and backslashes), without any
/// expansion: `{port}` and `$HOME` stay as written. `None`: an open quote.
pub fn split(s: &str) -> Option<Vec<String>> {
    shlex::split(s)
}

fn env_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell_without_expanding() {
        assert_eq!(
            split("python3 -m http.server {port} --bind {address}").unwrap(),
            [
                "python3",
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "{address}"
            ]
        );
        assert_eq!(
            split(r#"sh -c 'echo "$HOME" {port}'  a\ b "c d""#).unwrap(),
            ["sh", "-c", r#"echo "$HOME" {port}"#, "a b", "c d"]
        );
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split("sh -c 'open"), None);
    }

    #[test]
    fn empty_commands_and_bad_env_are_refused() {
        assert!(command_line("   ").is_err());
        assert!(command_line("'a").is_err());
        assert_eq!(env_var("A=b=c"), Ok(("A".to_string(), "b=c".to_string())));
        assert!(env_var("=x").is_err());
        assert!(env_var("NOEQ").is_err());
    }

    #[test]
    fn resources_take_their_groups_after_a_colon() {
        assert_eq!(resource("r1"), Ok(("r1".into(), vec![])));
        assert_eq!(
            resource("r1:admins, ops"),
            Ok(("r1".into(), vec!["admins".into(), "ops".into()]))
        );
        assert!(resource(":g").is_err());
    }
}
