//! `lbctl`, the lbaas command-line client.

mod args;
mod client;
mod commands;
mod config;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use serde_json::Value;

use args::{Cli, Command, InstanceCmd, Output, ProjectCmd};
use client::{ApiClient, ClientError};
use commands::WaitError;

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
    let envelope = commands::envelope(&cli.command).expect("every other command has an envelope");
    let mut info = client.call(&envelope)?;
    if let Some(wait) = commands::wait_args(&cli.command) {
        let tty = std::io::stderr().is_terminal() && cli.output == Output::Table && !cli.quiet;
        let spinner = ['|', '/', '-', '\\'];
        let mut tick = 0;
        info = commands::wait_until_active(&client, &info, wait, |status| {
            if tty {
                tick += 1;
                eprint!(
                    "\r{} waiting for {} ({status})...",
                    spinner[tick % spinner.len()],
                    info["name"].as_str().unwrap_or_default()
                );
            }
        })?;
        if tty {
            eprint!("\r\x1b[K");
        }
    }
    if !cli.quiet {
        print(cli, &info);
    }
    Ok(())
}

/// `lbctl top`: the dashboard, fed by `info project` every `interval` seconds.
fn top(client: ApiClient, url: &str, interval: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "lbctl top needs a terminal (use `lbctl project list -o json` in scripts)"
    );
    let fetch = Box::new(move || {
        let info = client
            .call(&serde_json::json!({"action": "info", "type": "project", "info": {}}))
            .map_err(|e| e.to_string())?;
        serde_json::from_value(info).map_err(|e| format!("unexpected answer: {e}"))
    });
    lbaas_tui::run(url, fetch, std::time::Duration::from_secs_f64(interval))?;
    Ok(())
}

fn print(cli: &Cli, info: &Value) {
    match cli.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(info).expect("JSON always serializes")
            );
            return;
        }
        Output::Yaml => {
            print!("{}", output::yaml(info));
            return;
        }
        Output::Table => {}
    }
    let empty = Vec::new();
    let text = match &cli.command {
        Command::Project(ProjectCmd::List) => output::projects(info.as_array().unwrap_or(&empty)),
        Command::Project(ProjectCmd::Delete { name, .. }) => {
            format!("project {name} is being deleted\n")
        }
        Command::Project(_) => output::project(info),
        Command::Instance(InstanceCmd::List { .. }) => {
            output::instances(info.as_array().unwrap_or(&empty))
        }
        Command::Instance(InstanceCmd::Delete { name, .. }) => {
            format!("instance {name} is being deleted\n")
        }
        Command::Instance(InstanceCmd::Create { .. } | InstanceCmd::Update { .. })
            if info["provisioning_status"] == "ACTIVE" =>
        {
            let nodes: Vec<&str> = info["nodes"]
                .as_array()
                .map(|l| l.iter().filter_map(|n| n["address"].as_str()).collect())
                .unwrap_or_default();
            format!(
                "{}\nnodes: {}\n",
                info["url"].as_str().unwrap_or_default(),
                nodes.join(", ")
            )
        }
        Command::Instance(InstanceCmd::Events { .. }) => output::events(info),
        Command::Instance(_) => output::instance(info),
        Command::Raw { .. } | Command::Top { .. } | Command::Completions { .. } => {
            unreachable!("handled before")
        }
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
