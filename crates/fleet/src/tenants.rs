//! The fleet's servers: the main one and the virtual servers its agents are spread over.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use outpost_server::{AdminServer, AdminService, FleetSync, StoredObjects};

use crate::config::{FleetConfig, FleetError, setup};
use crate::plan::{Member, policy_state};

/// The id of virtual server `k` (1 and up).
pub(crate) fn tenant_id(k: usize) -> String {
    format!("tenant-{}", k + 1)
}

/// The baseline `update.window` of server `tenant`.
pub(crate) fn window(tenant: usize) -> String {
    match tenant {
        0 => "night".into(),
        t => format!("night-{}", tenant_id(t)),
    }
}

/// Update bytes the servers sent, all of them.
pub(crate) fn served(services: &[Arc<AdminService>]) -> u64 {
    services
        .iter()
        .map(|s| s.stats().bytes_served.load(Ordering::Relaxed))
        .sum()
}

/// One-time enrollment tokens by server (tenant index) and device id.
pub(crate) type Tokens = HashMap<(usize, String), String>;

/// Adds the fleet's groups and one-time tokens for the members of server `tenant` to `reg`.
pub(crate) fn fill_registry(
    cfg: &FleetConfig,
    reg: &mut outpost_server::Registry,
    fleet: &[Member],
    tenant: usize,
    now: SystemTime,
) -> Result<Tokens, outpost_server::ServerError> {
    reg.add_group("fleet", "Fleet", None)?;
    for g in 1..=cfg.groups {
        reg.add_group(&format!("site-{g}"), &format!("Site {g}"), Some("fleet"))?;
    }
    let mut tokens = HashMap::new();
    for m in fleet.iter().filter(|m| m.tenant == tenant) {
        let t = reg.issue_token(&m.group, Some(&m.id), Duration::from_secs(3600), now)?;
        tokens.insert((tenant, m.id.clone()), t);
    }
    Ok(tokens)
}

/// Writes virtual server `tenant` (its row, multicast block `tenant - 1`, groups, tokens
/// and policies) into `storage`, the main server's, before the server starts.
pub(crate) fn add_virtual_server(
    cfg: &FleetConfig,
    storage: &outpost_server::Storage,
    fleet: &[Member],
    tenant: usize,
    now: SystemTime,
) -> Result<Tokens, outpost_server::ServerError> {
    let id = tenant_id(tenant);
    let block = u32::try_from(tenant - 1).unwrap_or(u32::MAX);
    storage.commit_blocking(vec![outpost_server::Op::PutVirtualServer(
        outpost_server::VirtualServerRecord::new(&id, format!("Tenant {}", tenant + 1), block),
    )])?;
    let mut reg = outpost_server::Registry::new(&id)?;
    let tokens = fill_registry(cfg, &mut reg, fleet, tenant, now)?;
    let state =
        outpost_policy::State::from_json(policy_state(cfg, fleet, tenant).to_string().as_bytes())
            .map_err(|e| outpost_server::ServerError::Config(e.to_string()))?;
    let mut ops = reg.take_journal().into_ops();
    ops.extend(outpost_server::policy_ops(&state, &BTreeMap::new())?);
    storage.scoped(&id).commit_blocking(ops)?;
    Ok(tokens)
}

/// Each server's sync source, device service and update store, by tenant index.
pub(crate) struct Handles {
    pub(crate) syncs: Vec<Arc<FleetSync>>,
    pub(crate) services: Vec<Arc<AdminService>>,
    /// `None` for the main server, which publishes through [`AdminServer::publish_update`].
    pub(crate) stores: Vec<Option<Arc<StoredObjects>>>,
}

/// The [`Handles`] of `server` and of its virtual servers, as `cfg` has them.
pub(crate) fn handles(cfg: &FleetConfig, server: &AdminServer) -> Result<Handles, FleetError> {
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
    Ok(Handles {
        syncs,
        services,
        stores,
    })
}
