//! The Administration Server: its device port, the DMZ gateways it dials, enrollment, sync,
//! files and push, the HTTPS administration API, with its state in a database.
//!
//! ```text
//! echo "$PASSWORD" | cargo run --example admin_server -- bootstrap --config F --name admin
//! cargo run --release --example admin_server -- run --config examples/config/admin-server.toml
//! cargo run --example admin_server -- import-policy --config F --file policy-state.json
//! cargo run --example admin_server -- import-registry --config F --file registry.json
//! ```
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

use std::time::Duration;

use outpost::server::{AdminServer, AdminServerConfig};

const PROGRAM: &str = "admin_server";

#[tokio::main]
async fn main() {
    common::init_logger();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = if args.first().is_some_and(|a| !a.starts_with("--")) {
        args.remove(0)
    } else {
        "run".to_string()
    };
    let allowed = ["config", "name", "file"];
    let flags = common::Flags::parse_from(PROGRAM, args, &allowed, &[]);
    let (text, base) = flags.config(PROGRAM);
    let config = AdminServerConfig::from_toml(&text).unwrap_or_else(|e| common::die(PROGRAM, e));
    config
        .validate()
        .unwrap_or_else(|e| common::die(PROGRAM, e));
    match command.as_str() {
        "run" => {}
        "bootstrap" => {
            let name = flags.need(PROGRAM, "name");
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .unwrap_or_else(|e| {
                    common::die(PROGRAM, format!("reading the password from stdin: {e}"))
                });
            let password = password.trim_end_matches(['\r', '\n']);
            config
                .bootstrap_account(&base, name, password)
                .unwrap_or_else(|e| common::die(PROGRAM, e));
            println!("administrator account {name:?} made");
            return;
        }
        "import-registry" => {
            let file = std::path::PathBuf::from(flags.need(PROGRAM, "file"));
            let n = config
                .import_registry(&base, &file)
                .unwrap_or_else(|e| common::die(PROGRAM, e));
            println!("registry imported from {}: {n} device(s)", file.display());
            return;
        }
        "import-policy" => {
            let file = std::path::PathBuf::from(flags.need(PROGRAM, "file"));
            let n = config
                .import_policy(&base, &file)
                .unwrap_or_else(|e| common::die(PROGRAM, e));
            println!(
                "policies imported from {}: {n} row(s) changed",
                file.display()
            );
            return;
        }
        other => common::die(
            PROGRAM,
            format!(
                "unknown command {other:?} (commands: run, bootstrap, import-policy, import-registry; the rest is done on the running server with outpostctl)"
            ),
        ),
    }
    let server = AdminServer::start(config, &base, None, None)
        .await
        .unwrap_or_else(|e| common::die(PROGRAM, e));
    println!("device port: {}", server.local_addr());
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| common::die(PROGRAM, format!("SIGTERM handler: {e}")));
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
}
