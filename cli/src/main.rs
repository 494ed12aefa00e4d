//! `lbctl`, the lbaas command-line client.

mod args;
mod client;
mod commands;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::Parser;
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

fn token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(t) = &cli.token {
        return Ok(t.clone());
    }
    let path = lbaas::paths::default_state_dir().join(lbaas::paths::ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.trim().to_string()),
        Err(e) => anyhow::bail!(
            "no token: pass --token or LBAAS_TOKEN, or start lbd so it writes {} ({e})",
            path.display()
        ),
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let client = ApiClient::new(&cli.url, token(cli)?);
    if let Command::Raw { file } = &cli.command {
        return raw(&client, file);
    }
    let envelope = commands::envelope(&cli.command).expect("every other command has an envelope");
    let mut info = client.call(&envelope)?;
    if let Some(wait) = commands::wait_args(&cli.command) {
        let tty = std::io::stderr().is_terminal() && cli.output == Output::Table;
        info = commands::wait_until_active(&client, &info, wait, |status| {
            if tty {
                eprint!(
                    "\rwaiting for {} ({status})...",
                    info["name"].as_str().unwrap_or_default()
                );
            }
        })?;
        if tty {
            eprint!("\r\x1b[K");
        }
    }
    print(cli, &info);
    Ok(())
}

fn print(cli: &Cli, info: &Value) {
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(info).expect("JSON always serializes")
        );
        return;
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
        Command::Raw { .. } => unreachable!("handled before"),
    };
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
