//! `lbctl`, the lbaas command-line client.

mod args;
mod client;
mod commands;
mod config;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use lbaas::model::{ProjectInfo, ProvisioningStatus};

use args::{Cli, Command, InstanceCmd, Output, ProjectCmd, UserCmd};
use client::{ApiClient, ClientError};
use commands::{Answer, Typed, WaitError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `instance mapping`: flags its `--kind` lacks or does not take, and
    // token files that cannot be read, are usage errors, before any request.
    let mapping = commands::mapping::request(&cli.command, &mut commands::mapping::read_file)
        .transpose()
        .unwrap_or_else(|e| usage_error(&cli.command, &e));
    match run(&cli, mapping) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exits 2 with clap's usage error, under the subcommand's usage line.
fn usage_error(cmd: &Command, e: &commands::mapping::MappingError) -> ! {
    let mut root = Cli::command();
    root.build();
    let mut at = &mut root;
    let path: &[&str] = match cmd {
        Command::Instance(InstanceCmd::Mapping(m)) => match m {
            args::mapping::MappingCmd::Add(_) => &["instance", "mapping", "add"],
            args::mapping::MappingCmd::Remove(_) => &["instance", "mapping", "remove"],
            args::mapping::MappingCmd::List { .. } => &["instance", "mapping", "list"],
        },
        _ => &[],
    };
    for name in path {
        at = at
            .find_subcommand_mut(name)
            .expect("the command line named it");
    }
    at.error(e.usage_kind(), e).exit()
}

/// 1: the API refused or the instance failed; 3: lbd cannot be reached.
fn exit_code(e: &anyhow::Error) -> u8 {
    let connect = |c: &ClientError| matches!(c, ClientError::Connect { .. });
    match (
        e.downcast_ref::<ClientError>(),
        e.downcast_ref::<WaitError>(),
    ) {
        (Some(c), _) | (_, Some(WaitError::Client(c))) if connect(c) => 3,
        _ => 1,
    }
}

/// Where lbctl finds lbd and its token: flags, then the environment (both
/// through clap), then the config file's chosen context, then its top
/// level, then the defaults.
struct Settings {
    url: String,
    token: String,
    context: Option<String>,
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let resolved = config::load()?.resolve(config::Overrides {
        url: cli.url.as_deref(),
        token: cli.token.as_deref(),
        context: cli.context.as_deref(),
    })?;
    let url = resolved
        .url
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    let context = resolved.context;
    if let Some(token) = resolved.token {
        return Ok(Settings {
            url,
            token,
            context,
        });
    }
    // A chosen context without a token must not quietly act as admin.
    if let Some(name) = &context {
        anyhow::bail!(
            "context {name:?} has no token: add token = \"...\" to [context.{name}] in {}, or pass --token",
            config::path().display()
        );
    }
    let path = lbaas::paths::default_state_dir().join(lbaas::paths::ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Settings {
            url,
            token: t.trim().to_string(),
            context,
        }),
        Err(e) => anyhow::bail!(
            "no token: pass --token or LBAAS_TOKEN, put token = \"...\" in {}, or start lbd so it writes {} ({e})",
            config::path().display(),
            path.display()
        ),
    }
}

fn run(cli: &Cli, mapping: Option<commands::Request>) -> anyhow::Result<()> {
    if let Command::Completions { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "lbctl", &mut std::io::stdout());
        return Ok(());
    }
    let settings = settings(cli)?;
    let client = ApiClient::new(&settings.url, settings.token);
    match &cli.command {
        Command::Raw { file } => return raw(&client, file),
        Command::Top { interval } => {
            let title = match &settings.context {
                Some(c) => format!("{} ({c})", settings.url),
                None => settings.url.clone(),
            };
            return top(client, &title, *interval);
        }
        _ => {}
    }
    commands::tls::check(&cli.command)?;
    if let Command::Instance(cmd) = &cli.command {
        let answer =
            commands::policy::run(&client, cmd).or_else(|| commands::tls::run(&client, cmd));
        if let Some(answer) = answer {
            let answer = answer?;
            if !cli.quiet {
                print(cli, &answer);
            }
            return Ok(());
        }
    }
    let request = match mapping {
        Some(request) => request,
        None => commands::request(&cli.command).expect("every other command sends a request"),
    };
    let mut answer = commands::send(&client, &request)?;
    if let (Some(wait), Typed::Instance(instance)) =
        (commands::wait_args(&cli.command), &answer.typed)
    {
        let tty = std::io::stderr().is_terminal() && cli.output == Output::Table && !cli.quiet;
        let spinner = ['|', '/', '-', '\\'];
        let mut tick = 0;
        let reply = commands::wait_until_active(&client, instance, wait, |status| {
            if tty {
                tick += 1;
                eprint!(
                    "\r{} waiting for {} ({})...",
                    spinner[tick % spinner.len()],
                    instance.name,
                    status.as_str()
                );
            }
        })?;
        if tty {
            eprint!("\r\x1b[K");
        }
        answer = reply.into();
    }
    if let Typed::User(user) = &answer.typed {
        if let Some(token) = &user.token {
            return new_token(cli, &answer, &user.name, token, &settings.url);
        }
    }
    if !cli.quiet {
        print(cli, &answer);
    }
    Ok(())
}

/// A created user's or a rotated token: shown this once, so even `-q`
/// prints it (it is the result, not chatter); `-o json|yaml` print lbd's
/// answer, which holds it. The hint goes to stderr, so stdout is only the token.
fn new_token(cli: &Cli, answer: &Answer, user: &str, token: &str, url: &str) -> anyhow::Result<()> {
    let notice = commands::users::token_notice(user, token, url, &config::path());
    match cli.output {
        Output::Table => print!("{}", notice.stdout),
        Output::Json | Output::Yaml => print(cli, answer),
    }
    if !cli.quiet {
        eprint!("{}", notice.stderr);
    }
    Ok(())
}

/// `lbctl top`: the dashboard, fed by `info project` every `interval` seconds.
fn top(client: ApiClient, url: &str, interval: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "lbctl top needs a terminal (use `lbctl project list -o json` in scripts)"
    );
    let request = commands::list_projects();
    let fetch: lbaas_tui::Fetch = Box::new(move || {
        client
            .call::<Vec<ProjectInfo>>(&request)
            .map(|reply| reply.value)
            .map_err(|e| e.to_string())
    });
    lbaas_tui::run(url, fetch, std::time::Duration::from_secs_f64(interval))?;
    Ok(())
}

/// `-o json` and `-o yaml` print the answer as lbd sent it; tables read the typed one.
fn print(cli: &Cli, answer: &Answer) {
    match cli.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer.raw).expect("JSON always serializes")
            );
            return;
        }
        Output::Yaml => {
            print!("{}", output::yaml(&answer.raw));
            return;
        }
        Output::Table => {}
    }
    let text = match (&cli.command, &answer.typed) {
        (Command::Project(ProjectCmd::Delete { name, .. }), _) => {
            format!("project {name} is being deleted\n")
        }
        (Command::Instance(InstanceCmd::Delete { name, .. }), _) => {
            format!("instance {name} is being deleted\n")
        }
        (
            Command::Instance(InstanceCmd::Create(_) | InstanceCmd::Update(_)),
            Typed::Instance(i),
        ) if i.provisioning_status == ProvisioningStatus::Active => output::serving(i),
        (Command::Instance(InstanceCmd::Events { .. }), Typed::Instance(i)) => output::events(i),
        (Command::Instance(InstanceCmd::Backends { .. }), Typed::Instance(i)) => {
            output::managed::backends(i, unix_now_ms())
        }
        (Command::Instance(InstanceCmd::Cert(_)), Typed::Instance(i)) => {
            commands::tls::certs_text(i, unix_now_ms() / 1000)
        }
        (_, Typed::Usage(r)) => output::managed::usage(r),
        (_, Typed::Instance(i)) => output::instance(i),
        (_, Typed::Instances(list)) => output::instances(list),
        (_, Typed::Project(p)) => output::project(p),
        (_, Typed::Projects(list)) => output::projects(list),
        (Command::User(UserCmd::Delete { name }), _) => format!("user {name} deleted\n"),
        (_, Typed::User(u)) => commands::users::info(u),
        (_, Typed::Users(list)) => commands::users::list(list),
        (_, Typed::WhoAmI(w)) => commands::users::whoami_text(w),
        (_, Typed::Audit(entries)) => commands::audit::text(entries),
        (Command::Instance(InstanceCmd::Pool(_)), Typed::Policy(p)) => {
            commands::policy::pools_text(p)
        }
        (Command::Instance(InstanceCmd::Rule(_)), Typed::Policy(p)) => {
            commands::policy::rules_text(p)
        }
        (_, Typed::Policy(p)) => commands::policy::policy_text(p),
        (
            Command::Instance(InstanceCmd::Mapping(args::mapping::MappingCmd::List {
                kind, ..
            })),
            Typed::Mappings(info),
        ) => commands::mapping::list_text(info, *kind, unix_now_ms() / 1000),
        (_, Typed::Mappings(info)) => {
            commands::mapping::list_text(info, None, unix_now_ms() / 1000)
        }
        (Command::Instance(InstanceCmd::Mapping(m)), Typed::MappingChange(version)) => {
            commands::mapping::change_text(m, *version)
        }
        (_, Typed::MappingChange(_)) => String::new(),
        (_, Typed::Done) => String::new(),
    };
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let text = if color { output::colorize(&text) } else { text };
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn raw(client: &ApiClient, file: &str) -> anyhow::Result<()> {
    let mut body = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut body)?;
    } else {
        body = std::fs::read(file).map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?;
    }
    let answer = client.send_raw(body)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    if let Some(e) = answer.error {
        return Err(ClientError::Api {
            code: e.code,
            message: e.message,
        }
        .into());
    }
    Ok(())
}
