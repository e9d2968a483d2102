//! The Administration Server: its device port, the DMZ gateways it dials, enrollment, sync,
//! files and push, with the registry kept in its data directory.
//!
//! ```text
//! cargo run --release --example admin_server -- run   --config examples/config/admin-server.toml
//! cargo run --example admin_server -- group --config F --id ID --name NAME [--parent P]
//! cargo run --example admin_server -- token --config F --group G [--device D] [--ttl-secs N]
//! cargo run --example admin_server -- register-dmz-gateway --config F --id ID --addr A --dns NAME
//! cargo run --example admin_server -- register-remote-office-gateway --config F --id ID --device D
//! cargo run --example admin_server -- register-dp --config F --device D --group G
//! cargo run --example admin_server -- import-policy --config F --file policy-state.json
//! cargo run --example admin_server -- import-registry --config F --file registry.json
//! echo "$PASSWORD" | cargo run --example admin_server -- bootstrap --config F --name admin
//! ```
//! The state is in the database the configuration's `[database]` names (SQLite in the data
//! directory by default). At its first start the server imports what older servers kept in
//! files (`registry.json`, `dp-epochs.json`, the `policy_state` file); `import-policy`
//! replaces the stored policies with a state file later, and `import-registry` brings a
//! registry file into a database that has no device yet. The offline commands run while no
//! server runs: `run` holds the data directory's lock (`server.lock`, with its pid), and every
//! other command refuses while it is held. SIGINT or SIGTERM stop a running server.

mod common;

use std::time::{Duration, SystemTime};

use outpost::server::{AdminServer, AdminServerConfig, Registry, ServerError};

const PROGRAM: &str = "admin_server";

/// Runs an offline registry command; refused while a server runs on the data directory.
fn edit(
    config: &AdminServerConfig,
    base: &std::path::Path,
    f: impl FnOnce(&mut Registry) -> Result<(), ServerError>,
) {
    config
        .edit_registry(base, f)
        .unwrap_or_else(|e| common::die(PROGRAM, e));
}

#[tokio::main]
async fn main() {
    common::init_logger();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = if args.first().is_some_and(|a| !a.starts_with("--")) {
        args.remove(0)
    } else {
        "run".to_string()
    };
    let allowed = [
        "config", "id", "name", "parent", "group", "device", "ttl-secs", "addr", "dns", "file",
    ];
    let flags = common::Flags::parse_from(PROGRAM, args, &allowed, &[]);
    let (text, base) = flags.config(PROGRAM);
    let config = AdminServerConfig::from_toml(&text).unwrap_or_else(|e| common::die(PROGRAM, e));
    config
        .validate()
        .unwrap_or_else(|e| common::die(PROGRAM, e));
    match command.as_str() {
        "run" => {}
        "group" => {
            edit(&config, &base, |r| {
                r.add_group(
                    flags.need(PROGRAM, "id"),
                    flags.need(PROGRAM, "name"),
                    flags.get("parent"),
                )
            });
            println!("group {} added", flags.need(PROGRAM, "id"));
            return;
        }
        "token" => {
            let ttl: u64 = flags
                .get("ttl-secs")
                .unwrap_or("86400")
                .parse()
                .unwrap_or_else(|e| common::die(PROGRAM, format!("--ttl-secs: {e}")));
            let mut token = String::new();
            edit(&config, &base, |r| {
                token = r.issue_token(
                    flags.need(PROGRAM, "group"),
                    flags.get("device"),
                    Duration::from_secs(ttl),
                    SystemTime::now(),
                )?;
                Ok(())
            });
            println!("{token}");
            return;
        }
        "register-dmz-gateway" => {
            let addr = flags
                .need(PROGRAM, "addr")
                .parse()
                .unwrap_or_else(|e| common::die(PROGRAM, format!("--addr: {e}")));
            edit(&config, &base, |r| {
                r.register_dmz_gateway(
                    flags.need(PROGRAM, "id"),
                    addr,
                    vec![flags.need(PROGRAM, "dns").to_string()],
                )
            });
            println!(
                "DMZ gateway {} registered; the server dials it from its next start",
                flags.need(PROGRAM, "id")
            );
            return;
        }
        "register-dp" => {
            edit(&config, &base, |r| {
                r.register_dp(flags.need(PROGRAM, "device"), flags.need(PROGRAM, "group"))
            });
            println!(
                "{} is a distribution point for {}",
                flags.need(PROGRAM, "device"),
                flags.need(PROGRAM, "group")
            );
            return;
        }
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
        "register-remote-office-gateway" => {
            edit(&config, &base, |r| {
                r.register_remote_office_gateway(
                    flags.need(PROGRAM, "id"),
                    flags.need(PROGRAM, "device"),
                )
            });
            println!(
                "remote-office gateway {} registered",
                flags.need(PROGRAM, "id")
            );
            return;
        }
        other => common::die(
            PROGRAM,
            format!(
                "unknown command {other:?} (commands: run, group, token, register-dp, register-dmz-gateway, register-remote-office-gateway, import-policy, import-registry, bootstrap)"
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
