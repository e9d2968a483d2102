//! `outpostctl`: the command-line client of the administration API of a running
//! `admin_server` (JSON over HTTPS, port 13299 by default).
//!
//! ```text
//! export OUTPOST_SERVER=https://server.example.test:13299 OUTPOST_CA=state/ca.crt
//! export OUTPOST_TOKEN=$(echo "$PASSWORD" | cargo run --example outpostctl -- login admin)
//! cargo run --example outpostctl -- groups create paris --name Paris
//! cargo run --example outpostctl -- tokens issue --group paris --device pc-1
//! cargo run --example outpostctl -- devices list --group paris --online true
//! cargo run --example outpostctl -- policies put --file usb.json
//! cargo run --example outpostctl -- --json devices show pc-1
//! ```
//!
//! Every subcommand has `--help`. Lists print a table (`--json`: the API's answer as it
//! is, for scripts). The server's certificate is checked against the server CA
//! (`--ca`, the `ca.crt` of the server's data directory), and its name against the URL's
//! host.

mod api;
mod cli;
mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use api::*;
use cli::*;
use commands::*;
use output::*;

const PROGRAM: &str = "outpostctl";

#[derive(Parser)]
#[command(
    name = "outpostctl",
    version,
    about = "Administer a running outpost server over its HTTPS API"
)]
struct Cli {
    /// The server's API, as https://HOST:PORT.
    #[arg(
        long,
        env = "OUTPOST_SERVER",
        default_value = "https://localhost:13299"
    )]
    server: String,
    /// The server CA certificate (PEM) the server's certificate must chain to.
    #[arg(long, env = "OUTPOST_CA")]
    ca: PathBuf,
    /// A session token (from `login`) or an API token.
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Work on this virtual server (sent as the `Outpost-Virtual-Server` header; the main
    /// server without it).
    #[arg(long, env = "OUTPOST_VIRTUAL_SERVER", global = true)]
    virtual_server: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in (the password is read from standard input) and print the session token.
    Login {
        /// The account name.
        name: String,
    },
    /// End the session of --token.
    Logout,
    /// The server's status.
    Status,
    /// The server's counters, in Prometheus' text format.
    Metrics,
    /// Administration groups.
    #[command(subcommand)]
    Groups(Groups),
    /// Enrolled devices.
    #[command(subcommand)]
    Devices(Devices),
    /// Enrollment tokens.
    #[command(subcommand)]
    Tokens(Tokens),
    /// Policies.
    #[command(subcommand)]
    Policies(Policies),
    /// Distribution points.
    #[command(subcommand)]
    Dps(Dps),
    /// Connection gateways.
    #[command(subcommand)]
    Gateways(Gateways),
    /// Update objects.
    #[command(subcommand)]
    Updates(Updates),
    /// The event log.
    Events {
        /// Only events of this kind (such as `audit.device.move`).
        #[arg(long)]
        kind: Option<String>,
        /// Only events of this device.
        #[arg(long)]
        device: Option<String>,
        /// Events after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Security issues.
    #[command(subcommand)]
    Issues(Issues),
    /// Administrator accounts.
    #[command(subcommand)]
    Accounts(Accounts),
    /// API tokens, for automation.
    #[command(subcommand)]
    ApiTokens(ApiTokens),
    /// Virtual servers (the main server's accounts).
    #[command(subcommand)]
    VirtualServers(VirtualServers),
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api = Api::new(&cli)?;
    let j = cli.json;
    match cli.command {
        Command::Login { name } => {
            let password = read_password("password")?;
            let a = api
                .send(
                    "POST",
                    "/api/v1/login",
                    json!({"name": name, "password": password}),
                )
                .await?;
            if j {
                print(&a, Show::Object, true);
            } else {
                println!("{}", a["token"].as_str().unwrap_or(""));
            }
        }
        Command::Logout => {
            api.send("POST", "/api/v1/logout", Value::Null).await?;
        }
        Command::Status => print(&api.get("/api/v1/status").await?, Show::Object, j),
        Command::Metrics => print(&api.get("/metrics").await?, Show::Text, false),
        Command::Groups(g) => groups(&api, g, j).await?,
        Command::Devices(d) => devices(&api, d, j).await?,
        Command::Tokens(t) => tokens(&api, t, j).await?,
        Command::Policies(p) => policies(&api, p, j).await?,
        Command::Dps(d) => dps(&api, d, j).await?,
        Command::Gateways(g) => gateways(&api, g, j).await?,
        Command::Updates(u) => updates(&api, u, j).await?,
        Command::Events {
            kind,
            device,
            after,
            limit,
        } => {
            let q = query(&[
                ("kind", kind),
                ("device", device),
                ("after", after.map(|a| a.to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            print(
                &api.get(&format!("/api/v1/events{q}")).await?,
                Show::Table(
                    "events",
                    &["seq", "at_unix_ms", "device", "kind", "severity", "body"],
                ),
                j,
            )
        }
        Command::Issues(i) => issues(&api, i, j).await?,
        Command::Accounts(a) => accounts(&api, a, j).await?,
        Command::VirtualServers(v) => virtual_servers(&api, v, j).await?,
        Command::ApiTokens(t) => api_tokens(&api, t, j).await?,
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(e)) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::FAILURE
        }
    }
}
