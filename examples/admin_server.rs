//! The Administration Server: its device port, the DMZ gateways it dials, enrollment, sync,
//! files and push, the HTTPS administration API, with its state in a database.
//!
//! ```text
//! echo "$PASSWORD" | cargo run --example admin_server -- bootstrap --config F --name admin
//! cargo run --release --example admin_server -- run --config examples/config/admin-server.toml
//! cargo run --example admin_server -- import-policy --config F --file policy-state.json
//! cargo run --example admin_server -- import-registry --config F --file registry.json
//! cargo run --example admin_server -- bootstrap --help
//! ```
//! `run` is the command when none is named (`admin_server --config F`).
//! Everything else (groups, enrollment tokens, devices, policies, gateways, distribution
//! points, updates, accounts) is done on the running server through its API, with the
//! `outpostctl` example or any HTTPS client. The state is in the database the
//! configuration's `[database]` names (SQLite in the data directory by default). At its first
//! start the server imports what older servers kept in files (`registry.json`,
//! `dp-epochs.json`, the `policy_state` file); `import-policy` replaces the stored policies
//! with a state file later, and `import-registry` brings a registry file into a database
//! that has no device yet. `bootstrap` makes the first administrator account, once. These
//! offline commands run while no server runs: `run` holds the data directory's lock
//! (`server.lock`, with its pid), and they refuse while it is held. SIGINT or SIGTERM stop a
//! running server.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outpost::server::{AdminServer, AdminServerConfig};

/// The Administration Server: its device port, the DMZ gateways it dials, enrollment, sync,
/// files and push, the HTTPS administration API, with its state in a database. Everything
/// but the commands below is done on the running server with `outpostctl`.
#[derive(Parser)]
#[command(
    name = "admin_server",
    version,
    args_override_self = true,
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// `run`'s flags: with no command named, `run` is the one.
    #[command(flatten)]
    run: Option<Config>,
}

/// The server's configuration file.
#[derive(clap::Args)]
struct Config {
    /// The server's configuration (TOML; relative paths in it start from its directory).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server until SIGINT or SIGTERM (the command when none is named); it holds
    /// the data directory's lock, `server.lock`, while it runs.
    Run(Config),
    /// Make the first administrator account, once, while no server runs; the password is
    /// read from the first line of stdin.
    Bootstrap {
        #[command(flatten)]
        config: Config,
        /// The account's name.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// Replace the stored policies with a policy state file, while no server runs.
    ImportPolicy {
        #[command(flatten)]
        config: Config,
        /// The state file (groups, policies, profiles), as `examples/data/policy-state.json`.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Bring a registry file (`registry.json`, as servers before the database kept it) into
    /// a database that holds no device yet, while no server runs.
    ImportRegistry {
        #[command(flatten)]
        config: Config,
        /// The registry file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// The configuration, checked, and the directory its relative paths start from.
fn load(config: &Config) -> Result<(AdminServerConfig, PathBuf), String> {
    let (text, base) = common::read_config(&config.config)?;
    let c = AdminServerConfig::from_toml(&text).map_err(|e| e.to_string())?;
    c.validate().map_err(|e| e.to_string())?;
    Ok((c, base))
}

fn bootstrap(config: &AdminServerConfig, base: &Path, name: &str) -> Result<(), String> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']);
    config
        .bootstrap_account(base, name, password)
        .map_err(|e| e.to_string())?;
    println!("administrator account {name:?} made");
    Ok(())
}

async fn serve(config: AdminServerConfig, base: &Path) -> Result<(), String> {
    let server = AdminServer::start(config, base, None, None)
        .await
        .map_err(|e| e.to_string())?;
    println!("device port: {}", server.local_addr());
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    #[cfg(unix)]
    let terminated = async move {
        term.recv().await;
    };
    #[cfg(not(unix))]
    let terminated = std::future::pending::<()>();
    tokio::pin!(terminated);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = &mut terminated => break,
            _ = tick.tick() => {
                let s = server.service().stats();
                println!(
                    "online {}, enrolled {}, syncs {}, gateways up {:?}",
                    server.service().online().len(),
                    s.enrolled.load(std::sync::atomic::Ordering::Relaxed),
                    s.syncs.load(std::sync::atomic::Ordering::Relaxed),
                    server.gateways_connected().keys().collect::<Vec<_>>()
                );
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run(config) => {
            let (config, base) = load(&config)?;
            serve(config, &base).await
        }
        Cmd::Bootstrap { config, name } => {
            let (config, base) = load(&config)?;
            bootstrap(&config, &base, &name)
        }
        Cmd::ImportPolicy { config, file } => {
            let (config, base) = load(&config)?;
            let n = config
                .import_policy(&base, &file)
                .map_err(|e| e.to_string())?;
            println!(
                "policies imported from {}: {n} row(s) changed",
                file.display()
            );
            Ok(())
        }
        Cmd::ImportRegistry { config, file } => {
            let (config, base) = load(&config)?;
            let n = config
                .import_registry(&base, &file)
                .map_err(|e| e.to_string())?;
            println!("registry imported from {}: {n} device(s)", file.display());
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_logger();
    // `arg_required_else_help` leaves no way to have neither.
    let Some(cmd) = cli.cmd.or(cli.run.map(Cmd::Run)) else {
        return ExitCode::from(2);
    };
    common::exit_code("admin_server", run(cmd).await)
}
