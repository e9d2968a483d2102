//! Many virtual servers in one Administration Server: `--servers` virtual servers (default
//! 500) of `--devices` devices each (default 200) are written to a fresh SQLite database,
//! then the server starts on it. Reports the memory each virtual server costs, the time of
//! a full distribution point election round and of resolving every device's settings across
//! all of them, and checks that one tenant's policy edit changes only its own devices.
//!
//! ```text
//! cargo run --release --example virtual_servers_scale -- --servers 500 --devices 200
//! ```

use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use outpost_server::{
    AdminServer, AdminServerConfig, DpScope, Op, Registry, Storage, SyncSource, VirtualServerRecord,
};

#[derive(Parser)]
#[command(about = "Virtual servers at scale: memory, election and policy resolution")]
struct Args {
    /// Virtual servers.
    #[arg(long, default_value_t = 500)]
    servers: usize,
    /// Devices per virtual server.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Groups per virtual server (devices are spread over them).
    #[arg(long, default_value_t = 4)]
    groups: usize,
}

/// The resident set size of this process, bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn policy(id: &str, group: &str, level: i64) -> String {
    serde_json::json!({
        "id": id, "app": "endpoint", "group": group,
        "settings": {"scan.level": {"value": level}}
    })
    .to_string()
}

/// Writes `n` virtual servers of `devices` devices each (in `groups` groups, two DPs per
/// group, one policy per group) straight into the database.
fn populate(storage: &Storage, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let now = SystemTime::now();
    let schema = serde_json::json!({"app": "endpoint", "settings": {"scan.level": {"type": "int", "default": 0}}})
        .to_string();
    let mut serial: u64 = 1;
    // One enrolled device's row, copied for every device (certificates are not the point).
    let template = {
        let mut r = Registry::new("template")?;
        r.add_group("g0", "G", None)?;
        let ca = outpost_pki::ServerCa::create(outpost_pki::PkiConfig::default(), now)?;
        let key = outpost_pki::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::new(vec![])?.serialize_request(&key)?;
        let token = r.issue_token("g0", None, Duration::from_secs(60), now)?;
        let req = outpost_wire::messages::EnrollRequest {
            device_id: "template".into(),
            csr_der: csr.der().to_vec().into(),
            enrollment_token: token,
            group_hint: String::new(),
        };
        outpost_server::enroll(&mut r, &ca, &req, now)?;
        r.device("template").cloned().ok_or("no template")?
    };
    for s in 0..args.servers {
        let id = format!("vs-{s:03}");
        storage.commit_blocking(vec![Op::PutVirtualServer(VirtualServerRecord::new(
            &id,
            format!("Tenant {s}"),
            u32::try_from(s)?,
        ))])?;
        let scoped = storage.scoped(&id);
        let mut reg = Registry::new(&id)?;
        let mut ops = vec![Op::PutPolicyObject {
            kind: outpost_server::PolicyObjectKind::Schema,
            id: "endpoint".into(),
            document: schema.clone(),
        }];
        for g in 0..args.groups {
            let group = format!("g{g}");
            reg.add_group(&group, "Group", None)?;
            ops.push(Op::PutPolicyObject {
                kind: outpost_server::PolicyObjectKind::Policy,
                id: format!("p-{group}"),
                document: policy(&format!("p-{group}"), &group, (s as i64) * 100 + g as i64),
            });
        }
        for d in 0..args.devices {
            let mut dev = template.clone();
            dev.group = format!("g{}", d % args.groups);
            dev.cert_sha256 = format!("{serial:064x}");
            dev.cert_serial = format!("{serial:040x}");
            serial += 1;
            reg.put_device(&format!("pc-{d:04}"), dev)?;
        }
        for g in 0..args.groups.min(args.devices) {
            let scope = DpScope::parse(&format!("g{g}"))?;
            reg.register_dp_scope(&format!("pc-{g:04}"), &scope)?;
            if args.devices > args.groups + g {
                reg.register_dp_scope(&format!("pc-{:04}", args.groups + g), &scope)?;
            }
        }
        ops.extend(reg.take_journal().into_ops());
        scoped.commit_blocking(ops)?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let base = dir.path();
    outpost_pki::store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["server.test".into()],
        SystemTime::now(),
    )?;
    let config = AdminServerConfig::from_toml(&format!(
        r#"
        instance_id = "server-1"
        data_dir = "state"
        listen = "127.0.0.1:0"
        [tls]
        cert = "state/server.chain.pem"
        key = "state/server.key"
        server_ca = "state/ca.crt"
        [virtual_servers]
        max = {}
        "#,
        args.servers.max(1)
    ))?;
    let t = Instant::now();
    {
        let storage = Storage::open(&config.database(base), "server-1")?;
        populate(&storage, &args)?;
    }
    let written = t.elapsed();
    let before = rss();
    let t = Instant::now();
    let running = AdminServer::start(config, base, None, None).await?;
    let started = t.elapsed();
    let after = rss();
    let servers = running.virtual_servers().clone();
    let tenants: Vec<_> = servers
        .all()
        .into_iter()
        .filter(|t| t.is_virtual())
        .collect();
    let devices: usize = tenants
        .iter()
        .map(|t| t.service().with_registry(|r| r.devices().len()))
        .sum();
    assert_eq!(tenants.len(), args.servers);
    assert_eq!(devices, args.servers * args.devices);

    // Each DP's heartbeat (a sync carrying its health), through the device service's sync
    // path as its connection would, then a full election round in every virtual server.
    let heartbeat = outpost_wire::messages::SyncRequest {
        free_disk_bytes: 50 << 30,
        uptime_secs: 3600,
        dp_status: vec![outpost_wire::messages::DpStatus::default()],
        ..Default::default()
    };
    let t = Instant::now();
    let mut beats = 0usize;
    for vs in &tenants {
        let dps: Vec<[u8; 32]> = vs.service().with_registry(|r| {
            r.devices()
                .values()
                .take(2 * args.groups)
                .filter_map(|d| {
                    let mut fp = [0u8; 32];
                    for (i, b) in fp.iter_mut().enumerate() {
                        *b = u8::from_str_radix(d.cert_sha256.get(2 * i..2 * i + 2)?, 16).ok()?;
                    }
                    Some(fp)
                })
                .collect()
        });
        for fp in &dps {
            vs.service()
                .sync_known(fp, &heartbeat)
                .ok_or("DP not known")?;
            beats += 1;
        }
    }
    let heartbeats = t.elapsed();
    let t = Instant::now();
    let mut elected = 0usize;
    for vs in &tenants {
        let fleet = vs.fleet().ok_or("no fleet")?;
        fleet.tick(Instant::now());
        elected += fleet
            .with_dps(|c| c.report().iter().filter(|r| r.role == "active").count())
            .unwrap_or(0);
    }
    let election = t.elapsed();

    // Every device's effective settings, in every virtual server.
    let t = Instant::now();
    let mut resolved = 0usize;
    for (s, vs) in tenants.iter().enumerate() {
        let policies = vs.fleet().and_then(|f| f.policy()).ok_or("no policies")?;
        for d in 0..args.devices {
            let e = policies
                .effective(&format!("pc-{d:04}"))
                .ok_or("not placed")?;
            let doc = outpost_server::settings_document(&e, "endpoint").ok_or("no settings")?;
            let doc = outpost::wire::settings::SettingsDocument::parse(&doc.1)?;
            let level = doc.values["scan"]["level"].as_i64().ok_or("no level")?;
            assert_eq!(
                level / 100,
                s as i64,
                "a device holds its own tenant's level"
            );
            resolved += 1;
        }
    }
    let resolution = t.elapsed();

    // One tenant's policy edit touches only its own devices.
    let edited = &tenants[tenants.len() / 2];
    let other = &tenants[0];
    let other_before = other
        .fleet()
        .and_then(|f| f.policy())
        .and_then(|p| p.effective("pc-0000"))
        .and_then(|e| outpost_server::settings_document(&e, "endpoint"));
    let p: outpost_policy::Policy = serde_json::from_str(&policy("p-g0", "g0", 99_999_999))?;
    let t = Instant::now();
    let changed = edited
        .fleet()
        .and_then(|f| f.policy())
        .ok_or("no policies")?
        .apply(outpost_policy::Change::UpsertPolicy(p))?;
    let edit = t.elapsed();
    let own: std::collections::BTreeSet<String> = edited
        .service()
        .with_registry(|r| r.devices().keys().cloned().collect());
    assert!(changed.iter().all(|d| own.contains(&**d)));
    assert_eq!(changed.len(), args.devices.div_ceil(args.groups));
    let other_after = other
        .fleet()
        .and_then(|f| f.policy())
        .and_then(|p| p.effective("pc-0000"))
        .and_then(|e| outpost_server::settings_document(&e, "endpoint"));
    assert_eq!(other_before, other_after, "another tenant is untouched");

    let per_server = after.saturating_sub(before) / args.servers.max(1) as u64;
    println!(
        "virtual servers: {} x {} devices = {devices} devices",
        args.servers, args.devices
    );
    println!("written to the database in {:.1} s", written.as_secs_f64());
    println!(
        "server start (load every virtual server): {:.2} s; resident memory {:.0} MiB -> {:.0} MiB, \
         {:.0} KiB per virtual server",
        started.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_server as f64 / 1024.0
    );
    println!(
        "{beats} DP heartbeats (syncs) in {:.1} ms; full election round across all: {:.1} ms \
         ({elected} active DPs)",
        heartbeats.as_secs_f64() * 1e3,
        election.as_secs_f64() * 1e3
    );
    println!(
        "every device's effective settings across all: {:.1} ms ({resolved} devices, {:.2} us each)",
        resolution.as_secs_f64() * 1e3,
        resolution.as_secs_f64() * 1e6 / resolved.max(1) as f64
    );
    println!(
        "one tenant's policy edit: {:.2} ms, {} device(s) changed, all of that tenant; others untouched",
        edit.as_secs_f64() * 1e3,
        changed.len()
    );
    running.shutdown().await;
    Ok(())
}
