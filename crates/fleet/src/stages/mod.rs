//! The run, one stage at a time: [`Fleet`] holds what the stages share, and each stage is
//! one method ending with [`Fleet::end_stage`], which times it in the report.
//!
//! The stages, in order: the server and the DMZ gateway up ([`Fleet::up`]), enrollment,
//! the first sync with the effective settings checked, the DP election, the update
//! distribution with the DP kill ([`distribution`]) and the verification ([`verify`]).

mod distribution;
mod election;
mod verify;

use outpost_wire::settings::SettingsDocument;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use outpost_agent::Agent;
use outpost_agent::distribution::DistributionStatus;
use outpost_gateway::{Gateway, GatewayConfig, TlsMaterial};
use outpost_pki::store;
use outpost_server::{AdminServer, AdminServerConfig, AdminService, FleetSync, StoredObjects};
use outpost_wire::messages::DpRole;

use crate::config::{FleetConfig, FleetError, setup};
use crate::plan::{Member, agent_config, members, policy_state, server_toml};
use crate::report::{FleetReport, Stage};
use crate::tenants::{Handles, Tokens, add_virtual_server, fill_registry, handles, window};
use crate::{APP, GATEWAY_NAME, SERVER_NAME};

/// A fleet being run: its configuration, its servers and gateway, its members and their
/// agents, and the report the stages fill in.
pub(crate) struct Fleet<'a, L> {
    cfg: &'a FleetConfig,
    base: &'a Path,
    /// The whole run ends by then.
    deadline: Instant,
    log: L,
    report: FleetReport,
    /// When the current stage began.
    stage: Instant,
    server: AdminServer,
    gateway: Gateway,
    members: Vec<Member>,
    tokens: Tokens,
    /// Each server's sync source, by tenant index.
    syncs: Vec<Arc<FleetSync>>,
    /// Each server's device service, by tenant index.
    services: Vec<Arc<AdminService>>,
    /// Each virtual server's update store, by tenant index (`None` for the main server,
    /// which publishes itself).
    stores: Vec<Option<Arc<StoredObjects>>>,
    /// One per member, in the same order; `None` once killed.
    agents: Vec<Option<Agent>>,
    /// The members' last distribution status, in the same order.
    snapshots: Vec<Option<DistributionStatus>>,
}

impl<'a, L: FnMut(String)> Fleet<'a, L> {
    /// The first stage: the server's state directory and the DMZ gateway, the registry and
    /// policies of every server, the server started and connected to the gateway.
    pub(crate) async fn up(
        cfg: &'a FleetConfig,
        base: &'a Path,
        log: L,
    ) -> Result<Self, FleetError> {
        let deadline = Instant::now() + cfg.timeout;
        let report = FleetReport {
            devices: cfg.agents,
            servers: cfg.virtual_servers,
            update_bytes: cfg.update_bytes,
            ..Default::default()
        };
        let stage = Instant::now();
        let now = SystemTime::now();
        let gateway = start_gateway(base, now).await?;
        let members = members(cfg, base);
        let (config, tokens) = write_state(cfg, base, &members, gateway.local_addr(), now)?;
        let server = AdminServer::start(config, base, None, None)
            .await
            .map_err(|e| setup("start server")(&e))?;
        let Handles {
            syncs,
            services,
            stores,
        } = handles(cfg, &server)?;
        if !until(Duration::from_secs(15), || {
            server.gateways_connected().contains_key("dmz-1")
        })
        .await
        {
            return Err(setup("dial the DMZ gateway")(&"not connected within 15 s"));
        }
        let mut fleet = Fleet {
            cfg,
            base,
            deadline,
            log,
            report,
            stage,
            server,
            gateway,
            agents: Vec::with_capacity(members.len()),
            snapshots: Vec::new(),
            members,
            tokens,
            syncs,
            services,
            stores,
        };
        fleet.report.via_gateway = fleet.members.iter().filter(|m| m.via_gateway).count();
        fleet.end_stage("server and DMZ gateway up");
        Ok(fleet)
    }

    /// Enrollment: every agent at once, in batches of 50.
    pub(crate) async fn enroll(&mut self) -> Result<(), FleetError> {
        let (server, gateway) = (self.server.local_addr(), self.gateway.local_addr());
        for chunk in self.members.chunks(50) {
            let starts = chunk.iter().map(|m| {
                let token = &self.tokens[&(m.tenant, m.id.clone())];
                Agent::start(agent_config(self.cfg, m, self.base, server, gateway, token))
            });
            for (m, r) in chunk
                .iter()
                .zip(futures_util::future::join_all(starts).await)
            {
                let a = r.map_err(|e| FleetError::Setup {
                    step: "start agent",
                    reason: format!("{}: {e}", m.id),
                })?;
                self.agents.push(Some(a));
            }
        }
        let line = format!("{} agents enrolled", self.agents.len());
        (self.log)(line);
        self.end_stage("enrollment");
        Ok(())
    }

    /// First sync: every agent holds its settings document, the one its own server computed
    /// for it (its server's `update.window`, the kiosk profile where it is tagged).
    pub(crate) async fn first_sync(&mut self) -> Result<(), FleetError> {
        let all_synced =
            |agents: &[Option<Agent>]| agents.iter().flatten().all(|a| a.settings(APP).is_some());
        if !until(self.left(), || all_synced(&self.agents)).await {
            return Err(setup("first sync")(&"not every agent got its settings"));
        }
        for (m, a) in self.members.iter().zip(&self.agents) {
            let a = a.as_ref().ok_or_else(|| setup("agents")(&"missing"))?;
            let policies = self.syncs[m.tenant]
                .policy()
                .ok_or_else(|| setup("policies")(&"none loaded"))?;
            let want = policies
                .effective(&m.id)
                .and_then(|e| outpost_server::settings_document(&e, APP));
            let got = a.settings(APP);
            let want_doc = want
                .as_ref()
                .and_then(|(_, b)| SettingsDocument::parse(b).ok());
            let got_doc = got.as_ref().map(|(_, d)| SettingsDocument::from_json(d));
            if want_doc.is_none() || got_doc != want_doc {
                self.report
                    .failures
                    .push(format!("{}: settings {got:?}, expected {want_doc:?}", m.id));
                continue;
            }
            check_window_and_profile(m, got_doc.as_ref(), &mut self.report);
        }
        self.end_stage("first sync, effective settings");
        Ok(())
    }

    /// Ends the current stage: logs and records its time, and starts the next one's clock.
    fn end_stage(&mut self, name: &'static str) {
        let secs = self.stage.elapsed().as_secs_f64();
        (self.log)(format!("stage {name}: {secs:.2} s"));
        self.report.stages.push(Stage { name, secs });
        self.stage = Instant::now();
    }

    /// The time left until the run's deadline.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Shuts every agent still running, the server and the gateway down; returns the report.
    pub(crate) async fn shut_down(self) -> FleetReport {
        for a in self.agents.into_iter().flatten() {
            a.shutdown().await;
        }
        self.server.shutdown().await;
        self.gateway.shutdown().await;
        self.report
    }
}

/// The server's state directory under `base` (CAs and its certificate) and the DMZ
/// gateway, started with its certificate.
async fn start_gateway(base: &Path, now: SystemTime) -> Result<Gateway, FleetError> {
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
    Gateway::start(
        GatewayConfig::dmz("dmz-1", SocketAddr::from(([127, 0, 0, 1], 0))),
        TlsMaterial::new(gw_cert, ca.server_ca().clone()),
    )
    .await
    .map_err(|e| setup("start DMZ gateway")(&e))
}

/// What the server loads at its start, written under `base`: the main server's policies,
/// its registry (groups, one-time tokens, the DMZ gateway at `gateway`) and every virtual
/// server. Returns the server's configuration and every member's token.
fn write_state(
    cfg: &FleetConfig,
    base: &Path,
    fleet: &[Member],
    gateway: SocketAddr,
    now: SystemTime,
) -> Result<(AdminServerConfig, Tokens), FleetError> {
    let config =
        AdminServerConfig::from_toml(&server_toml(cfg)).map_err(|e| setup("server config")(&e))?;
    // The policies first: the server imports the file into its database at its first start.
    let policy = serde_json::to_vec_pretty(&policy_state(cfg, fleet, 0))
        .map_err(|e| setup("policy state")(&e))?;
    std::fs::write(base.join("policy.json"), policy).map_err(|e| setup("policy state")(&e))?;
    let mut tokens = config
        .edit_registry(base, |reg| {
            let tokens = fill_registry(cfg, reg, fleet, 0, now)?;
            reg.register_dmz_gateway("dmz-1", gateway, vec![GATEWAY_NAME.into()])?;
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
                add_virtual_server(cfg, &storage, fleet, t, now)
                    .map_err(|e| setup("virtual servers")(&e))?,
            );
        }
    }
    Ok((config, tokens))
}

/// Checks the settings document `doc` of member `m` (already equal to the one its server
/// computed) against what the policies say outright: its own server's `update.window`
/// (never another's) outside `site-1`, and the kiosk profile where it is tagged, counted in
/// [`FleetReport::kiosks`].
fn check_window_and_profile(m: &Member, doc: Option<&SettingsDocument>, report: &mut FleetReport) {
    // Its own server's baseline, never another's.
    let own = doc.and_then(|d| d.values.pointer("/update/window").cloned());
    if m.group != "site-1" && own != Some(serde_json::Value::String(window(m.tenant))) {
        report.failures.push(format!(
            "{} of server {}: update.window {own:?}, not its server's",
            m.id, m.tenant
        ));
    }
    let lockdown = doc.and_then(|d| d.values.pointer("/kiosk/lockdown").cloned());
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

/// Whether `f` holds within `timeout`, asked every 50 ms (and once more at the end).
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

/// The role and fencing epoch `st` holds in `group`, if any.
fn role_in(st: &DistributionStatus, group: &str) -> Option<(DpRole, u64)> {
    st.roles
        .iter()
        .find(|((_, id), _, _)| id == group)
        .map(|(_, r, e)| (*r, *e))
}
