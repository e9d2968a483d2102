//! What the fleet is made of: its members (server, group, DP or not, gateway or not,
//! tagged or not), the policies each server resolves for them, the server's and the agents'
//! configurations, and the update's bytes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_agent::{AgentConfig, Endpoint};

use crate::config::FleetConfig;
use crate::tenants::{tenant_id, window};
use crate::{APP, GATEWAY_NAME, SERVER_NAME};

/// One agent of the fleet: which server, group and role it has, and where its files go.
pub(crate) struct Member {
    /// The server it belongs to: 0 the main server, `k` virtual server [`tenant_id`]`(k)`.
    pub(crate) tenant: usize,
    /// Its device id (each server has the same ids).
    pub(crate) id: String,
    /// Its group, `site-N`.
    pub(crate) group: String,
    /// One of its group's two distribution points.
    pub(crate) dp: bool,
    /// Connects through the DMZ gateway.
    pub(crate) via_gateway: bool,
    /// Tagged `kiosk`, which the baseline policy's profile targets.
    pub(crate) kiosk: bool,
    /// Its data directory.
    pub(crate) dir: PathBuf,
}

/// The members of `cfg`, their files under `base`.
pub(crate) fn members(cfg: &FleetConfig, base: &Path) -> Vec<Member> {
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
pub(crate) fn policy_state(
    cfg: &FleetConfig,
    fleet: &[Member],
    tenant: usize,
) -> serde_json::Value {
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

/// The server's configuration: its state under `state/`, any loopback port, its gateways
/// dialled quickly, heartbeats a second apart, DPs registered by the run (no automatic
/// assignment).
pub(crate) fn server_toml(cfg: &FleetConfig) -> String {
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

/// The configuration of member `m`: its one endpoint (the server or the DMZ gateway), its
/// one-time `token`, and multicast on 127.0.0.1 at the fleet's rate.
pub(crate) fn agent_config(
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
