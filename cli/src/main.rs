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

use args::{Cli, Command, InstanceCmd, Output, ProjectCmd};
use client::{ApiClient, ClientError};
use commands::{Answer, Typed, WaitError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
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
/// through clap), then the config file, then the defaults.
struct Settings {
    url: String,
    token: String,
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let file = config::load()?;
    let url = cli
        .url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    if let Some(t) = cli.token.clone().or(file.token) {
        return Ok(Settings { url, token: t });
    }
    let path = lbaas::paths::default_state_dir().join(lbaas::paths::ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Settings {
            url,
            token: t.trim().to_string(),
        }),
        Err(e) => anyhow::bail!(
            "no token: pass --token or LBAAS_TOKEN, put token = \"...\" in {}, or start lbd so it writes {} ({e})",
            config::path().display(),
            path.display()
        ),
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "lbctl", &mut std::io::stdout());
        return Ok(());
    }
    let settings = settings(cli)?;
    let client = ApiClient::new(&settings.url, settings.token);
    match &cli.command {
        Command::Raw { file } => return raw(&client, file),
        Command::Top { interval } => return top(client, &settings.url, *interval),
        _ => {}
    }
    let request = commands::request(&cli.command).expect("every other command sends a request");
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
    if !cli.quiet {
        print(cli, &answer);
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
        (_, Typed::Instance(i)) => output::instance(i),
        (_, Typed::Instances(list)) => output::instances(list),
        (_, Typed::Project(p)) => output::project(p),
        (_, Typed::Projects(list)) => output::projects(list),
    };
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let text = if color { output::colorize(&text) } else { text };
    let _ = std::io::stdout().write_all(text.as_bytes());
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
