//! A whole fleet in one process on loopback: an Administration Server, a DMZ gateway it
//! dials, and a fleet of Network Agents in a few groups (some behind the gateway), each with
//! its own data directory. [`run`] enrolls them, resolves their policies (with a profile for
//! tagged devices), elects an active and a standby distribution point per group, publishes
//! an update that the DPs spread by multicast, kills one active DP halfway so its standby
//! takes over, and checks that every device ends with the byte-exact update and the
//! effective settings the server computed for it.
//!
//! With [`FleetConfig::virtual_servers`] above 1 the agents are spread over the main server
//! and virtual servers (`tenant-2`, ...), each with the same groups, device ids and DPs but
//! its own policies (its own `update.window`) and its own copy of the update, spread by
//! its own DPs on its own multicast groups: every device must end with its own server's
//! settings.
//!
//! The `demo` example is this function with flags; the end-to-end tests run it small.
//!
//! ```no_run
//! # async fn demo() -> Result<(), outpost_fleet::FleetError> {
//! let dir = std::env::temp_dir().join("outpost-fleet");
//! let mut config = outpost_fleet::FleetConfig::default();
//! config.agents = 20;
//! config.update_bytes = 4 << 20;
//! let report = outpost_fleet::run(&config, &dir, |line| eprintln!("{line}")).await?;
//! println!("{}", report.table());
//! assert!(report.ok(), "{:?}", report.failures);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use outpost_agent::distribution::{DistributionStatus, Via};
use outpost_agent::{Agent, AgentConfig, AgentHandle, Endpoint};
use outpost_election::sim::SplitMix64;
use outpost_gateway::{Gateway, GatewayConfig, GatewayHandle, TlsMaterial};
use outpost_pki::store;
use outpost_server::{AdminServer, AdminServerConfig};
use outpost_wire::messages::DpRole;

mod tenants;
use tenants::{add_virtual_server, fill_registry, served, tenant_id, window};

const SERVER_NAME: &str = "server.outpost.test";
const GATEWAY_NAME: &str = "gw.outpost.test";
const UPDATE_ID: &str = "update-1";
const APP: &str = "endpoint";

/// What went wrong setting the fleet up (a device that ends wrong is not an error: it is
/// listed in [`FleetReport::failures`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A configuration value cannot work.
    #[error("fleet configuration: {0}")]
    Config(String),
    /// A step of the set-up failed.
    #[error("{step}: {reason}")]
    Setup {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

fn setup(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> FleetError {
    move |e| FleetError::Setup {
        step,
        reason: e.to_string(),
    }
}

/// The fleet to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetConfig {
    /// Agents in all (default 200), spread over the groups; the first two of each group are
    /// its distribution points.
    pub agents: usize,
    /// Groups under the root group, one DP scope each (default 4).
    pub groups: usize,
    /// Every n-th agent connects through the DMZ gateway (default 4; 0: none).
    pub via_gateway_every: usize,
    /// Every n-th agent is tagged `kiosk`, which a policy profile targets (default 5).
    pub kiosk_every: usize,
    /// Size of the update (default 64 MiB).
    pub update_bytes: u64,
    /// Each DP's multicast rate ceiling, Mbit/s (default 150).
    pub rate_mbps: u64,
    /// Payload bytes per multicast datagram (default 8192: loopback's MTU is 64 KiB).
    pub symbol_size: u16,
    /// Kill the active DP of the first group once its devices hold this fraction of the
    /// update (default 0.5; `None`: no failover).
    pub kill_at: Option<f64>,
    /// The multicast UDP port (default 15001).
    pub multicast_port: u16,
    /// The whole run must end within this (default 15 min).
    pub timeout: Duration,
    /// Seed of the update's bytes.
    pub seed: u64,
    /// Servers the agents are spread over (default 1: the main server only); the others
    /// are virtual servers.
    pub virtual_servers: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            agents: 200,
            groups: 4,
            via_gateway_every: 4,
            kiosk_every: 5,
            update_bytes: 64 << 20,
            rate_mbps: 150,
            symbol_size: 8192,
            kill_at: Some(0.5),
            multicast_port: 15001,
            timeout: Duration::from_secs(900),
            seed: 1,
            virtual_servers: 1,
        }
    }
}

impl FleetConfig {
    fn validate(&self) -> Result<(), FleetError> {
        let bad = |m: String| Err(FleetError::Config(m));
        if self.groups == 0 || self.groups > 64 {
            return bad(format!("groups: {} is outside 1..=64", self.groups));
        }
        if self.virtual_servers == 0 || self.virtual_servers > 500 {
            return bad(format!(
                "virtual_servers: {} is outside 1..=500",
                self.virtual_servers
            ));
        }
        let least = 3 * self.groups * self.virtual_servers;
        if self.agents < least || self.agents > 5000 {
            return bad(format!(
                "agents: {} must be 3 per group of each server ({least}) to 5000",
                self.agents,
            ));
        }
        if self.update_bytes == 0 || self.update_bytes > 4 << 30 {
            return bad(format!(
                "update size {} is outside 1 B..=4 GiB",
                self.update_bytes
            ));
        }
        if let Some(k) = self.kill_at
            && !(0.0..1.0).contains(&k)
        {
            return bad(format!("kill_at: {k} is outside 0..1"));
        }
        if self.multicast_port == 0 {
            return bad("multicast_port: 0".into());
        }
        Ok(())
    }
}

/// The time one stage took.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stage {
    /// What the stage did.
    pub name: &'static str,
    /// Seconds.
    pub secs: f64,
}

/// What a run measured and found.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct FleetReport {
    /// Devices run.
    pub devices: usize,
    /// Servers they were spread over (the main one and virtual ones).
    pub servers: usize,
    /// Devices connected through the DMZ gateway.
    pub via_gateway: usize,
    /// Time per stage.
    pub stages: Vec<Stage>,
    /// The update's size.
    pub update_bytes: u64,
    /// Verified update bytes on devices' disks at the end.
    pub delivered_bytes: u64,
    /// Update bytes the server sent (chunk answers).
    pub server_egress_bytes: u64,
    /// Bytes the DPs sent by multicast (every datagram).
    pub multicast_bytes: u64,
    /// Bytes the DPs served by unicast (standbys, late blocks).
    pub dp_unicast_bytes: u64,
    /// How devices got the update: `multicast`, `dp`, `server`, `disk`.
    pub via: BTreeMap<String, usize>,
    /// Blocks fetched by unicast during multicast reception, all devices.
    pub fetched_blocks: u64,
    /// Blocks kept from an earlier session (resumed after the failover), all devices.
    pub resumed_blocks: u64,
    /// The DP that was killed.
    pub killed: Option<String>,
    /// From the kill to the standby holding the active role, seconds.
    pub failover_secs: Option<f64>,
    /// From the kill to the new active DP sending, seconds.
    pub resume_secs: Option<f64>,
    /// Devices with the profile's setting (tagged `kiosk`) that have it.
    pub kiosks: usize,
    /// Every device that ended wrong, and how.
    pub failures: Vec<String>,
}

impl FleetReport {
    /// Whether every device ended right.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("| {k:<48} | {v:>16} |\n"));
        row("devices", self.devices.to_string());
        if self.servers > 1 {
            row("  over servers (main + virtual)", self.servers.to_string());
        }
        row("  through the DMZ gateway", self.via_gateway.to_string());
        row("  tagged kiosk, profile applied", self.kiosks.to_string());
        for s in &self.stages {
            row(&format!("stage: {}", s.name), format!("{:.2} s", s.secs));
        }
        row("update size", format!("{:.1} MiB", mib(self.update_bytes)));
        row(
            "delivered to devices (verified)",
            format!("{:.1} MiB", mib(self.delivered_bytes)),
        );
        row(
            "sent by the server",
            format!("{:.1} MiB", mib(self.server_egress_bytes)),
        );
        if self.server_egress_bytes > 0 {
            row(
                "  delivered / server egress",
                format!(
                    "{:.1}x",
                    self.delivered_bytes as f64 / self.server_egress_bytes as f64
                ),
            );
        }
        row(
            "sent by DPs, multicast",
            format!("{:.1} MiB", mib(self.multicast_bytes)),
        );
        row(
            "sent by DPs, unicast",
            format!("{:.1} MiB", mib(self.dp_unicast_bytes)),
        );
        for (k, v) in &self.via {
            row(&format!("devices that got it via {k}"), v.to_string());
        }
        row("blocks fetched by unicast", self.fetched_blocks.to_string());
        row(
            "blocks resumed after failover",
            self.resumed_blocks.to_string(),
        );
        if let Some(k) = &self.killed {
            row("active DP killed", k.clone());
        }
        if let Some(f) = self.failover_secs {
            row("failover: standby active after", format!("{f:.2} s"));
        }
        if let Some(f) = self.resume_secs {
            row("failover: new DP sending after", format!("{f:.2} s"));
        }
        row("devices ending wrong", self.failures.len().to_string());
        let line = format!("+{}+{}+\n", "-".repeat(50), "-".repeat(18));
        format!("{line}{t}{line}")
    }
}

struct Member {
    /// The server it belongs to: 0 the main server, `k` virtual server [`tenant_id`]`(k)`.
    tenant: usize,
    id: String,
    group: String,
    dp: bool,
    via_gateway: bool,
    kiosk: bool,
    dir: PathBuf,
}

fn members(cfg: &FleetConfig, base: &Path) -> Vec<Member> {
    let mut out = Vec::with_capacity(cfg.agents);
    for i in 0..cfg.agents {
        // Consecutive agents go to consecutive servers; within a server, as before.
        let tenant = i % cfg.virtual_servers;
        let j = i / cfg.virtual_servers;
        let g = j % cfg.groups;
        let k = j / cfg.groups;
        let group = format!("site-{}", g + 1);
        let id = match k {
            0 => format!("{group}-dp-a"),
            1 => format!("{group}-dp-b"),
            _ => format!("{group}-dev-{:04}", k - 1),
        };
        let dir = match tenant {
            0 => base.join("agents").join(&id),
            t => base.join("agents").join(tenant_id(t)).join(&id),
        };
        out.push(Member {
            tenant,
            dir,
            dp: k < 2,
            via_gateway: cfg.via_gateway_every > 0 && i % cfg.via_gateway_every == 3,
            kiosk: cfg.kiosk_every > 0 && k >= 2 && i % cfg.kiosk_every == 0,
            id,
            group,
        });
    }
    out
}

/// The policies of server `tenant` for its members of `fleet`: the same for every server,
/// but for its own `update.window`.
fn policy_state(cfg: &FleetConfig, fleet: &[Member], tenant: usize) -> serde_json::Value {
    use serde_json::json;
    let mut groups = vec![json!({"id": "fleet"})];
    for g in 1..=cfg.groups {
        groups.push(json!({"id": format!("site-{g}"), "parent": "fleet"}));
    }
    let devices: Vec<_> = fleet
        .iter()
        .filter(|m| m.tenant == tenant)
        .map(|m| {
            let tags: Vec<&str> = if m.kiosk { vec!["kiosk"] } else { vec![] };
            json!({"id": m.id, "group": m.group, "tags": tags})
        })
        .collect();
    json!({
        "schemas": [{
            "app": APP,
            "settings": {
                "scan.level": {"type": "int", "min": 1, "max": 5, "default": 2},
                "kiosk.lockdown": {"type": "bool", "default": false},
                "update.window": {"type": "string"}
            }
        }],
        "groups": groups,
        "policies": [
            {
                "id": "fleet-baseline", "app": APP, "group": "fleet",
                "settings": {
                    "scan.level": {"value": 3, "locked": true},
                    "update.window": {"value": window(tenant)}
                },
                "profiles": [{
                    "name": "kiosks",
                    "condition": {"tags": {"names": ["kiosk"]}},
                    "settings": {"kiosk.lockdown": true}
                }]
            },
            {
                "id": "site-1-daytime", "app": APP, "group": "site-1",
                "settings": {"update.window": {"value": "day"}}
            }
        ],
        "devices": devices
    })
}

fn server_toml(cfg: &FleetConfig) -> String {
    format!(
        r#"
instance_id = "fleet-server"
data_dir = "state"
listen = "127.0.0.1:0"
policy_state = "policy.json"
multicast_port = {port}
[tls]
cert = "state/server.chain.pem"
key = "state/server.key"
server_ca = "state/ca.crt"
[connector]
server_id = "fleet-server"
keepalive_ms = 1000
backoff_initial_ms = 50
[election]
heartbeat_interval_secs = 1
missed_heartbeats = 5
min_free_disk_bytes = 268435456
warn_free_disk_bytes = 134217728
[election.auto_assignment]
enabled = false
"#,
        port = cfg.multicast_port
    )
}

fn agent_config(
    cfg: &FleetConfig,
    m: &Member,
    base: &Path,
    server: SocketAddr,
    gateway: SocketAddr,
    token: &str,
) -> AgentConfig {
    let mut c = AgentConfig::new(&m.id, &m.dir);
    c.endpoints = vec![if m.via_gateway {
        Endpoint::new(gateway, GATEWAY_NAME)
    } else {
        Endpoint::new(server, SERVER_NAME)
    }];
    c.enrollment.server = Some(Endpoint::new(server, SERVER_NAME));
    c.enrollment.server_ca = base.join("state/ca.crt");
    c.enrollment.token = token.into();
    c.backoff.initial_ms = 100;
    c.backoff.max_ms = 2000;
    c.default_sync_secs = 60;
    c.request_timeout_ms = 30_000;
    let d = &mut c.distribution;
    d.serve = m.dp;
    d.unicast_bind = SocketAddr::from(([127, 0, 0, 1], 0));
    d.multicast_iface = std::net::Ipv4Addr::LOCALHOST;
    d.multicast_loopback = true;
    d.multicast_ttl = 1;
    d.max_rate_mbps = cfg.rate_mbps;
    d.symbol_size = cfg.symbol_size;
    d.block_symbols = ((1u32 << 20) / u32::from(cfg.symbol_size.max(1))).clamp(1, 8192);
    d.start_delay_ms = 1500;
    d.session_idle_ms = 2000;
    d.session_wait_ms = 20_000;
    c
}

/// Fills `n` bytes from `seed` (fast, not cryptographic).
fn update_bytes(n: u64, seed: u64) -> Vec<u8> {
    let mut r = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(n as usize);
    while (v.len() as u64) < n {
        let w = r.next_u64().to_le_bytes();
        let take = (n - v.len() as u64).min(8) as usize;
        v.extend_from_slice(&w[..take]);
    }
    v
}

async fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

fn role_in(st: &DistributionStatus, group: &str) -> Option<(DpRole, u64)> {
    st.roles
        .iter()
        .find(|((_, id), _, _)| id == group)
        .map(|(_, r, e)| (*r, *e))
}

/// Runs the fleet in `base` (created; left in place for inspection), calling `log` with
/// progress lines.
///
/// # Errors
/// [`FleetError`] if the fleet cannot be set up; devices that end wrong are reported in
/// [`FleetReport::failures`].
pub async fn run(
    cfg: &FleetConfig,
    base: &Path,
    mut log: impl FnMut(String),
) -> Result<FleetReport, FleetError> {
    cfg.validate()?;
    let deadline = Instant::now() + cfg.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut report = FleetReport {
        devices: cfg.agents,
        servers: cfg.virtual_servers,
        update_bytes: cfg.update_bytes,
        ..Default::default()
    };
    let mut stage = Instant::now();
    let mut end_stage =
        |name: &'static str, report: &mut FleetReport, log: &mut dyn FnMut(String)| {
            let secs = stage.elapsed().as_secs_f64();
            log(format!("stage {name}: {secs:.2} s"));
            report.stages.push(Stage { name, secs });
            stage = Instant::now();
        };

    // The server's state directory: CAs and its certificate; the gateway's certificate.
    let now = SystemTime::now();
    std::fs::create_dir_all(base).map_err(|e| setup("create base directory")(&e))?;
    let ca = store::init_server_dir(
        &base.join("state"),
        "fleet-server",
        &[SERVER_NAME.into()],
        now,
    )
    .map_err(|e| setup("server CA and certificate")(&e))?;
    let gw_cert = ca
        .issue_gateway(&[GATEWAY_NAME.into()], &[], now)
        .map_err(|e| setup("issue gateway certificate")(&e))?;
    let gateway: GatewayHandle = Gateway::start(
        GatewayConfig::dmz("dmz-1", SocketAddr::from(([127, 0, 0, 1], 0))),
        TlsMaterial::new(gw_cert, ca.server_ca().clone()),
    )
    .await
    .map_err(|e| setup("start DMZ gateway")(&e))?;

    // Registry: groups, one-time tokens, the DMZ gateway; policies with a profile.
    let fleet = members(cfg, base);
    report.via_gateway = fleet.iter().filter(|m| m.via_gateway).count();
    let config =
        AdminServerConfig::from_toml(&server_toml(cfg)).map_err(|e| setup("server config")(&e))?;
    // The policies first: the server imports the file into its database at its first start.
    let policy = serde_json::to_vec_pretty(&policy_state(cfg, &fleet, 0))
        .map_err(|e| setup("policy state")(&e))?;
    std::fs::write(base.join("policy.json"), policy).map_err(|e| setup("policy state")(&e))?;
    let mut tokens = config
        .edit_registry(base, |reg| {
            let tokens = fill_registry(cfg, reg, &fleet, 0, now)?;
            reg.register_dmz_gateway("dmz-1", gateway.local_addr(), vec![GATEWAY_NAME.into()])?;
            Ok(tokens)
        })
        .map_err(|e| setup("registry")(&e))?;
    // The virtual servers, written into the database before the server starts (it loads
    // them all): each its row, groups, tokens and policies.
    if cfg.virtual_servers > 1 {
        let storage = outpost_server::Storage::open(&config.database(base), "fleet-server")
            .map_err(|e| setup("virtual servers")(&e))?;
        for t in 1..cfg.virtual_servers {
            tokens.extend(
                add_virtual_server(cfg, &storage, &fleet, t, now)
                    .map_err(|e| setup("virtual servers")(&e))?,
            );
        }
    }
    let server = AdminServer::start(config, base, None, None)
        .await
        .map_err(|e| setup("start server")(&e))?;
    // Each server's sync source and device service, by tenant index.
    let mut syncs = vec![
        server
            .fleet()
            .cloned()
            .ok_or_else(|| setup("policies and election")(&"no sync source"))?,
    ];
    let mut services = vec![server.service().clone()];
    let mut stores = vec![None];
    for t in 1..cfg.virtual_servers {
        let vs = server
            .virtual_servers()
            .get(&tenant_id(t))
            .ok_or_else(|| setup("virtual servers")(&"not loaded"))?;
        syncs.push(
            vs.fleet()
                .cloned()
                .ok_or_else(|| setup("virtual servers")(&"no sync source"))?,
        );
        services.push(vs.service().clone());
        stores.push(vs.updates().cloned());
    }
    if !until(Duration::from_secs(15), || {
        server.gateways_connected().contains_key("dmz-1")
    })
    .await
    {
        return Err(setup("dial the DMZ gateway")(&"not connected within 15 s"));
    }
    end_stage("server and DMZ gateway up", &mut report, &mut log);

    // Enrollment: every agent at once, in batches.
    let mut agents: Vec<Option<AgentHandle>> = Vec::with_capacity(fleet.len());
    for chunk in fleet.chunks(50) {
        let starts = chunk.iter().map(|m| {
            let c = agent_config(
                cfg,
                m,
                base,
                server.local_addr(),
                gateway.local_addr(),
                &tokens[&(m.tenant, m.id.clone())],
            );
            Agent::start(c)
        });
        for (m, r) in chunk
            .iter()
            .zip(futures_util::future::join_all(starts).await)
        {
            let a = r.map_err(|e| FleetError::Setup {
                step: "start agent",
                reason: format!("{}: {e}", m.id),
            })?;
            agents.push(Some(a));
        }
    }
    log(format!("{} agents enrolled", agents.len()));
    end_stage("enrollment", &mut report, &mut log);

    // First sync: every agent holds its settings document.
    let all_synced =
        |agents: &[Option<AgentHandle>]| agents.iter().flatten().all(|a| a.settings(APP).is_some());
    if !until(left(), || all_synced(&agents)).await {
        return Err(setup("first sync")(&"not every agent got its settings"));
    }
    for (m, a) in fleet.iter().zip(&agents) {
        let a = a.as_ref().ok_or_else(|| setup("agents")(&"missing"))?;
        let policies = syncs[m.tenant]
            .policy()
            .ok_or_else(|| setup("policies")(&"none loaded"))?;
        let want = policies
            .effective(&m.id)
            .and_then(|e| outpost_server::settings_document(&e, APP));
        let got = a.settings(APP);
        let want_doc = want
            .as_ref()
            .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok());
        if want_doc.is_none() || got.as_ref().map(|g| &g.1) != want_doc.as_ref() {
            report
                .failures
                .push(format!("{}: settings {got:?}, expected {want_doc:?}", m.id));
            continue;
        }
        // Its own server's baseline, never another's.
        let own = got
            .as_ref()
            .and_then(|(_, d)| d.pointer("/values/update/window").cloned());
        if m.group != "site-1" && own != Some(serde_json::Value::String(window(m.tenant))) {
            report.failures.push(format!(
                "{} of server {}: update.window {own:?}, not its server's",
                m.id, m.tenant
            ));
        }
        let lockdown = got
            .as_ref()
            .and_then(|(_, d)| d.pointer("/values/kiosk/lockdown").cloned())
            .or_else(|| {
                got.as_ref()
                    .and_then(|(_, d)| d.pointer("/values/kiosk.lockdown").cloned())
            });
        if m.kiosk {
            if lockdown == Some(serde_json::Value::Bool(true)) {
                report.kiosks += 1;
            } else {
                report.failures.push(format!(
                    "{}: kiosk profile not applied ({lockdown:?})",
                    m.id
                ));
            }
        }
    }
    end_stage("first sync, effective settings", &mut report, &mut log);

    // Distribution points: two per group, registered now that they are enrolled.
    let dps: Vec<&Member> = fleet.iter().filter(|m| m.dp).collect();
    for m in &dps {
        services[m.tenant]
            .update_registry(|r| r.register_dp(&m.id, &m.group))
            .await
            .map_err(|e| setup("register DP")(&e))?;
        syncs[m.tenant]
            .with_dps(|c| c.register_group_dp(&m.id, &m.group))
            .transpose()
            .map_err(|e| setup("register DP")(&e))?;
    }
    for (t, svc) in services.iter().enumerate() {
        let ids: Vec<&str> = dps
            .iter()
            .filter(|m| m.tenant == t)
            .map(|m| m.id.as_str())
            .collect();
        svc.push_all(&ids, "registered as distribution point", 1);
    }
    let settled = || {
        syncs.iter().all(|sync| {
            sync.with_dps(|c| {
                let d = c.election().decisions();
                d.len() == cfg.groups
                    && d.iter()
                        .all(|d| d.active.is_some() && !d.standbys.is_empty())
            })
            .unwrap_or(false)
        })
    };
    if !until(Duration::from_secs(30).min(left()), settled).await {
        return Err(setup("election")(
            &"no active and standby DP in every group",
        ));
    }
    // The DPs know their roles (the answer that made them so came to them).
    let index: HashMap<(usize, &str), usize> = fleet
        .iter()
        .enumerate()
        .map(|(i, m)| ((m.tenant, m.id.as_str()), i))
        .collect();
    let roles_known = |agents: &[Option<AgentHandle>]| {
        (0..cfg.virtual_servers * cfg.groups).all(|n| {
            let (t, group) = (n / cfg.groups, format!("site-{}", n % cfg.groups + 1));
            let roles: Vec<DpRole> = ["a", "b"]
                .iter()
                .filter_map(|s| agents[index[&(t, format!("{group}-dp-{s}").as_str())]].as_ref())
                .filter_map(|a| a.distribution())
                .filter_map(|d| role_in(&d, &group).map(|r| r.0))
                .collect();
            roles.contains(&DpRole::Active) && roles.contains(&DpRole::Standby)
        })
    };
    if !until(Duration::from_secs(30).min(left()), || roles_known(&agents)).await {
        return Err(setup("election")(&"the DPs did not learn their roles"));
    }
    end_stage(
        "DP election (active + standby per group)",
        &mut report,
        &mut log,
    );

    // The update: published, announced to every device in one push.
    let data = update_bytes(cfg.update_bytes, cfg.seed);
    let ann = server
        .publish_update(UPDATE_ID, UPDATE_ID, 1, &data)
        .await
        .map_err(|e| setup("publish the update")(&e))?;
    // Each virtual server publishes its own copy, from its own store.
    for (t, store) in stores.iter().enumerate().skip(1) {
        let store = store
            .as_ref()
            .ok_or_else(|| setup("publish the update")(&"no store"))?;
        let a = store
            .publish(UPDATE_ID, UPDATE_ID, 1, &data)
            .await
            .map_err(|e| setup("publish the update")(&e))?;
        syncs[t].publish_update(a);
    }
    let pushed: usize = services
        .iter()
        .map(|svc| svc.push_all(&svc.online(), "update published", 2))
        .sum();
    log(format!(
        "published {UPDATE_ID} ({:.1} MiB), pushed to {pushed} devices",
        cfg.update_bytes as f64 / 1048576.0
    ));

    let victim_group = "site-1".to_string();
    let mut killed: Option<(usize, Instant, u64)> = None;
    let mut last_print = Instant::now();
    let mut snapshots: Vec<Option<DistributionStatus>> = vec![None; agents.len()];
    let complete = loop {
        for (i, a) in agents.iter().enumerate() {
            if let Some(a) = a {
                snapshots[i] = a.distribution();
            }
        }
        let progress = |i: usize| {
            snapshots[i]
                .as_ref()
                .and_then(|s| s.updates.get(UPDATE_ID))
                .map_or((0, false), |u| (u.done_bytes, u.via.is_some()))
        };
        let done = (0..agents.len()).filter(|&i| progress(i).1).count();
        let bytes: u64 = (0..agents.len()).map(|i| progress(i).0).sum();
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let mcast: u64 = snapshots
                .iter()
                .flatten()
                .flat_map(|s| &s.sent)
                .map(|s| s.bytes_sent)
                .sum();
            log(format!(
                "distribution: {:5.1}% of bytes, {done}/{} devices complete, multicast sent {:.0} MiB, server sent {:.0} MiB",
                100.0 * bytes as f64 / (cfg.update_bytes as f64 * agents.len() as f64),
                agents.len(),
                mcast as f64 / 1048576.0,
                served(&services) as f64 / 1048576.0
            ));
        }
        if done == agents.len() {
            break true;
        }
        // Kill the first group's active DP once its devices hold `kill_at` of the update.
        if let (Some(at), None) = (cfg.kill_at, &killed) {
            let devs: Vec<usize> = fleet
                .iter()
                .enumerate()
                .filter(|(_, m)| m.tenant == 0 && m.group == victim_group && !m.dp)
                .map(|(i, _)| i)
                .collect();
            let frac = devs.iter().map(|&i| progress(i).0).sum::<u64>() as f64
                / (cfg.update_bytes as f64 * devs.len() as f64);
            let active = fleet.iter().enumerate().find(|(i, m)| {
                m.tenant == 0
                    && m.group == victim_group
                    && m.dp
                    && snapshots[*i]
                        .as_ref()
                        .and_then(|s| role_in(s, &victim_group))
                        .is_some_and(|r| r.0 == DpRole::Active)
            });
            if frac >= at
                && let Some((i, m)) = active
            {
                let epoch = snapshots[i]
                    .as_ref()
                    .and_then(|s| role_in(s, &victim_group))
                    .map_or(0, |r| r.1);
                log(format!(
                    "killing active DP {} of {victim_group} at {:.0}% of its devices' bytes",
                    m.id,
                    frac * 100.0
                ));
                agents[i] = None;
                killed = Some((i, Instant::now(), epoch));
                report.killed = Some(m.id.clone());
            }
        }
        if let Some((k, at, epoch)) = killed {
            let standby = fleet
                .iter()
                .enumerate()
                .find(|(i, m)| *i != k && m.tenant == 0 && m.group == victim_group && m.dp);
            if let Some((s, _)) = standby
                && let Some(st) = &snapshots[s]
            {
                if report.failover_secs.is_none()
                    && role_in(st, &victim_group)
                        .is_some_and(|r| r.0 == DpRole::Active && r.1 > epoch)
                {
                    report.failover_secs = Some(at.elapsed().as_secs_f64());
                    log(format!(
                        "failover: {} active after {:.2} s",
                        fleet[s].id,
                        at.elapsed().as_secs_f64()
                    ));
                }
                if report.resume_secs.is_none() && st.sent.iter().any(|x| x.bytes_sent > 0) {
                    report.resume_secs = Some(at.elapsed().as_secs_f64());
                }
            }
            // The killed DP's own copy is complete (it sent from it).
            if let Some(s) = snapshots[k].as_mut()
                && let Some(u) = s.updates.get_mut(UPDATE_ID)
                && u.via.is_none()
            {
                report
                    .failures
                    .push(format!("{}: killed before it held the update", fleet[k].id));
                u.via = Some(Via::Disk);
            }
        }
        if left().is_zero() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if !complete {
        for (i, m) in fleet.iter().enumerate() {
            let u = snapshots[i].as_ref().and_then(|s| s.updates.get(UPDATE_ID));
            if u.is_none_or(|u| u.via.is_none()) {
                report.failures.push(format!(
                    "{}: update incomplete after the time allowed ({:?})",
                    m.id, u
                ));
            }
        }
    }
    end_stage(
        "update distribution (multicast, failover)",
        &mut report,
        &mut log,
    );

    // Every device's file, read back and hashed here.
    let copies = fleet
        .iter()
        .map(|m| (m.id.clone(), m.dir.join("updates").join(UPDATE_ID)))
        .collect();
    let (delivered, wrong) = verify_copies(copies, &ann.sha256).await;
    report.delivered_bytes += delivered;
    report.failures.extend(wrong);
    for s in snapshots.iter().flatten() {
        report.multicast_bytes += s.sent.iter().map(|x| x.bytes_sent).sum::<u64>();
        report.dp_unicast_bytes += s.unicast_bytes_served;
        if let Some(u) = s.updates.get(UPDATE_ID) {
            report.fetched_blocks += u64::from(u.fetched_blocks);
            report.resumed_blocks += u64::from(u.resumed_blocks);
            let via = match u.via {
                Some(Via::Multicast) => "multicast",
                Some(Via::Dp) => "DP unicast",
                Some(Via::Server) => "server",
                Some(Via::Disk) => "disk",
                Some(_) | None => "nothing",
            };
            *report.via.entry(via.into()).or_default() += 1;
        }
    }
    report.server_egress_bytes = served(&services);
    end_stage("verification (every file hashed)", &mut report, &mut log);

    for a in agents.into_iter().flatten() {
        a.shutdown().await;
    }
    server.shutdown().await;
    gateway.shutdown().await;
    Ok(report)
}

/// Reads back and hashes every device's copy of the update, two at a time (each on a
/// blocking thread). Returns the bytes of the copies whose SHA-256 is `sha256`, and one
/// line per device whose copy is missing, unreadable or different.
async fn verify_copies(copies: Vec<(String, PathBuf)>, sha256: &[u8]) -> (u64, Vec<String>) {
    let mut delivered = 0;
    let mut wrong = Vec::new();
    for pair in copies.chunks(2) {
        let tasks: Vec<_> = pair
            .iter()
            .map(|(_, path)| {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let len = std::fs::metadata(&path).map(|m| m.len());
                    outpost_agent::distribution::chunks::hash_file(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|h| len.map(|l| (h, l)).map_err(|e| e.to_string()))
                })
            })
            .collect();
        for ((id, _), t) in pair.iter().zip(tasks) {
            match t.await {
                Ok(Ok((h, len))) if h[..] == sha256[..] => delivered += len,
                Ok(Ok(_)) => wrong.push(format!(
                    "{id}: the update on disk does not match its SHA-256"
                )),
                Ok(Err(e)) => wrong.push(format!("{id}: {e}")),
                Err(e) => wrong.push(format!("{id}: hash task: {e}")),
            }
        }
    }
    (delivered, wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's failure path: a device whose copy is missing, shorter or different ends
    /// wrong, is named, and makes the report fail (the demo then exits 1).
    #[tokio::test]
    async fn a_missing_short_or_different_copy_fails_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
        let sha = outpost_multicast::manifest::sha256(&data);
        let put = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let mut flipped = data.clone();
        flipped[2_500_001] ^= 0x10;
        let copies = vec![
            ("dev-good".to_string(), put("good", &data)),
            ("dev-flipped".to_string(), put("flipped", &flipped)),
            (
                "dev-short".to_string(),
                put("short", &data[..data.len() - 1]),
            ),
            ("dev-missing".to_string(), dir.path().join("missing")),
            ("dev-good-2".to_string(), put("good2", &data)),
        ];
        let (delivered, wrong) = verify_copies(copies, &sha).await;
        assert_eq!(
            delivered,
            2 * data.len() as u64,
            "only the two good copies count"
        );
        assert_eq!(wrong.len(), 3, "{wrong:?}");
        for (line, id) in wrong
            .iter()
            .zip(["dev-flipped", "dev-short", "dev-missing"])
        {
            assert!(line.starts_with(&format!("{id}: ")), "{line}");
        }
        assert!(wrong[0].contains("does not match"), "{}", wrong[0]);

        let mut report = FleetReport {
            devices: 5,
            delivered_bytes: delivered,
            ..FleetReport::default()
        };
        assert!(report.ok());
        report.failures = wrong;
        assert!(!report.ok());
        let table = report.table();
        let row = table
            .lines()
            .find(|l| l.contains("devices ending wrong"))
            .expect("row present");
        assert!(
            row.trim_end_matches('|').trim_end().ends_with(" 3"),
            "{row}"
        );
    }
}
