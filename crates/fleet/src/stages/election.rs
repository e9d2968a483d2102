//! The DP election stage: two distribution points per group registered on their server,
//! and every group of every server with an active and a standby DP that know their roles.

use std::collections::HashMap;
use std::time::Duration;

use outpost_agent::Agent;
use outpost_wire::messages::DpRole;

use super::{Fleet, role_in, until};
use crate::config::{FleetError, setup};
use crate::plan::Member;

impl<L: FnMut(String)> Fleet<'_, L> {
    /// DP election: the DPs registered, then every group of every server with an active
    /// and a standby, each DP holding its role (the answer that made it so came to it).
    pub(crate) async fn elect(&mut self) -> Result<(), FleetError> {
        self.register_dps().await?;
        let cfg = self.cfg;
        let settled = || {
            self.syncs.iter().all(|sync| {
                sync.with_dps(|c| {
                    let d = c.election().decisions();
                    d.len() == cfg.groups
                        && d.iter()
                            .all(|d| d.active.is_some() && !d.standbys.is_empty())
                })
                .unwrap_or(false)
            })
        };
        if !until(Duration::from_secs(30).min(self.left()), settled).await {
            return Err(setup("election")(
                &"no active and standby DP in every group",
            ));
        }
        // The DPs know their roles (the answer that made them so came to them).
        let index: HashMap<(usize, &str), usize> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.tenant, m.id.as_str()), i))
            .collect();
        let roles_known = |agents: &[Option<Agent>]| {
            (0..cfg.virtual_servers * cfg.groups).all(|n| {
                let (t, group) = (n / cfg.groups, format!("site-{}", n % cfg.groups + 1));
                let roles: Vec<DpRole> = ["a", "b"]
                    .iter()
                    .filter_map(|s| {
                        agents[index[&(t, format!("{group}-dp-{s}").as_str())]].as_ref()
                    })
                    .filter_map(|a| a.distribution())
                    .filter_map(|d| role_in(&d, &group).map(|r| r.0))
                    .collect();
                roles.contains(&DpRole::Active) && roles.contains(&DpRole::Standby)
            })
        };
        let within = Duration::from_secs(30).min(self.left());
        if !until(within, || roles_known(&self.agents)).await {
            return Err(setup("election")(&"the DPs did not learn their roles"));
        }
        self.end_stage("DP election (active + standby per group)");
        Ok(())
    }

    /// Distribution points: two per group, registered on their server now that they are
    /// enrolled, and told so in one push per server.
    async fn register_dps(&mut self) -> Result<(), FleetError> {
        let dps: Vec<&Member> = self.members.iter().filter(|m| m.dp).collect();
        for m in &dps {
            self.services[m.tenant]
                .update_registry(|r| r.register_dp(&m.id, &m.group))
                .await
                .map_err(|e| setup("register DP")(&e))?;
            self.syncs[m.tenant]
                .with_dps(|c| c.register_group_dp(&m.id, &m.group))
                .transpose()
                .map_err(|e| setup("register DP")(&e))?;
        }
        for (t, svc) in self.services.iter().enumerate() {
            let ids: Vec<&str> = dps
                .iter()
                .filter(|m| m.tenant == t)
                .map(|m| m.id.as_str())
                .collect();
            svc.push_all(&ids, "registered as distribution point", 1);
        }
        Ok(())
    }
}
