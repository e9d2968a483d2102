//! The update distribution stage: the update published on every server and announced in
//! one push, spread by the DPs by multicast, and the active DP of the main server's first
//! group killed once its devices hold [`FleetConfig::kill_at`](crate::FleetConfig::kill_at)
//! of it, its standby taking over.

use std::time::{Duration, Instant};

use outpost_agent::distribution::Delivery;
use outpost_wire::messages::{DpRole, UpdateAnnouncement};

use super::{Fleet, role_in};
use crate::UPDATE_ID;
use crate::config::{FleetError, setup};
use crate::tenants::served;

/// The group of the main server whose active DP is killed.
const VICTIM_GROUP: &str = "site-1";

/// The active DP that was killed: its member index, when, and the fencing epoch it held.
#[derive(Debug, Clone, Copy)]
struct Killed {
    index: usize,
    at: Instant,
    epoch: u64,
}

impl<L: FnMut(String)> Fleet<'_, L> {
    /// The update distribution: published, then watched every 250 ms (a progress line every
    /// 2 s) until every device holds it or the run's time is up, the DP killed on the way
    /// and the failover timed. Returns the main server's announcement of the update.
    pub(crate) async fn distribute(&mut self) -> Result<UpdateAnnouncement, FleetError> {
        let announcement = self.publish().await?;
        let mut killed: Option<Killed> = None;
        let mut last_print = Instant::now();
        self.snapshots = vec![None; self.agents.len()];
        let complete = loop {
            self.refresh();
            let all = self.agents.len();
            let done = (0..all).filter(|&i| self.progress(i).1).count();
            let bytes: u64 = (0..all).map(|i| self.progress(i).0).sum();
            if last_print.elapsed() >= Duration::from_secs(2) {
                last_print = Instant::now();
                self.log_progress(done, bytes);
            }
            if done == all {
                break true;
            }
            if let (Some(at), None) = (self.cfg.kill_at, killed) {
                killed = self.kill_at(at);
            }
            if let Some(k) = killed {
                self.watch_failover(k);
            }
            if self.left().is_zero() {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if !complete {
            self.report_incomplete();
        }
        self.end_stage("update distribution (multicast, failover)");
        Ok(announcement)
    }

    /// The update: published by the main server and by each virtual server from its own
    /// store, and announced to every device online in one push per server.
    async fn publish(&mut self) -> Result<UpdateAnnouncement, FleetError> {
        let data = outpost_testkit::payload(self.cfg.seed, self.cfg.update_bytes as usize);
        let ann = self
            .server
            .publish_update(UPDATE_ID, UPDATE_ID, 1, &data)
            .await
            .map_err(|e| setup("publish the update")(&e))?;
        // Each virtual server publishes its own copy, from its own store.
        for (t, store) in self.stores.iter().enumerate().skip(1) {
            let store = store
                .as_ref()
                .ok_or_else(|| setup("publish the update")(&"no store"))?;
            let a = store
                .publish(UPDATE_ID, UPDATE_ID, 1, &data)
                .await
                .map_err(|e| setup("publish the update")(&e))?;
            self.syncs[t].publish_update(a);
        }
        let pushed: usize = self
            .services
            .iter()
            .map(|svc| svc.push_all(&svc.online(), "update published", 2))
            .sum();
        (self.log)(format!(
            "published {UPDATE_ID} ({:.1} MiB), pushed to {pushed} devices",
            self.cfg.update_bytes as f64 / 1048576.0
        ));
        Ok(ann)
    }

    /// Takes every running agent's distribution status (a killed one keeps its last).
    fn refresh(&mut self) {
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(a) = a {
                self.snapshots[i] = a.distribution();
            }
        }
    }

    /// Member `i`'s update bytes so far, and whether it holds the whole update.
    fn progress(&self, i: usize) -> (u64, bool) {
        self.snapshots[i]
            .as_ref()
            .and_then(|s| s.updates.get(UPDATE_ID))
            .map_or((0, false), |u| (u.done_bytes, u.via.is_some()))
    }

    /// Logs the share of the update's bytes the devices hold, how many are complete, and
    /// what the DPs and the servers have sent.
    fn log_progress(&mut self, done: usize, bytes: u64) {
        let mcast: u64 = self
            .snapshots
            .iter()
            .flatten()
            .flat_map(|s| &s.sent)
            .map(|s| s.bytes_sent)
            .sum();
        let all = self.agents.len();
        (self.log)(format!(
            "distribution: {:5.1}% of bytes, {done}/{} devices complete, multicast sent {:.0} MiB, server sent {:.0} MiB",
            100.0 * bytes as f64 / (self.cfg.update_bytes as f64 * all as f64),
            all,
            mcast as f64 / 1048576.0,
            served(&self.services) as f64 / 1048576.0
        ));
    }

    /// Kills the main server's first group's active DP once its devices hold `at` of the
    /// update; the kill, if it happened now.
    fn kill_at(&mut self, at: f64) -> Option<Killed> {
        let devs: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.tenant == 0 && m.group == VICTIM_GROUP && !m.dp)
            .map(|(i, _)| i)
            .collect();
        let frac = devs.iter().map(|&i| self.progress(i).0).sum::<u64>() as f64
            / (self.cfg.update_bytes as f64 * devs.len() as f64);
        let active = self.members.iter().enumerate().find(|(i, m)| {
            m.tenant == 0
                && m.group == VICTIM_GROUP
                && m.dp
                && self.snapshots[*i]
                    .as_ref()
                    .and_then(|s| role_in(s, VICTIM_GROUP))
                    .is_some_and(|r| r.0 == DpRole::Active)
        });
        let (i, m) = match active {
            Some(active) if frac >= at => active,
            _ => return None,
        };
        let epoch = self.snapshots[i]
            .as_ref()
            .and_then(|s| role_in(s, VICTIM_GROUP))
            .map_or(0, |r| r.1);
        (self.log)(format!(
            "killing active DP {} of {VICTIM_GROUP} at {:.0}% of its devices' bytes",
            m.id,
            frac * 100.0
        ));
        self.agents[i] = None;
        let killed = Killed {
            index: i,
            at: Instant::now(),
            epoch,
        };
        self.report.killed = Some(m.id.clone());
        Some(killed)
    }

    /// After the kill: times the standby taking the active role (a later epoch) and its
    /// first multicast bytes; a killed DP that did not hold the whole update is a failure
    /// (and counts as done, from its disk).
    fn watch_failover(&mut self, k: Killed) {
        let standby = self
            .members
            .iter()
            .enumerate()
            .find(|(i, m)| *i != k.index && m.tenant == 0 && m.group == VICTIM_GROUP && m.dp);
        if let Some((s, _)) = standby
            && let Some(st) = &self.snapshots[s]
        {
            if self.report.failover_secs.is_none()
                && role_in(st, VICTIM_GROUP).is_some_and(|r| r.0 == DpRole::Active && r.1 > k.epoch)
            {
                self.report.failover_secs = Some(k.at.elapsed().as_secs_f64());
                (self.log)(format!(
                    "failover: {} active after {:.2} s",
                    self.members[s].id,
                    k.at.elapsed().as_secs_f64()
                ));
            }
            if self.report.resume_secs.is_none() && st.sent.iter().any(|x| x.bytes_sent > 0) {
                self.report.resume_secs = Some(k.at.elapsed().as_secs_f64());
            }
        }
        // The killed DP's own copy is complete (it sent from it).
        if let Some(s) = self.snapshots[k.index].as_mut()
            && let Some(u) = s.updates.get_mut(UPDATE_ID)
            && u.via.is_none()
        {
            self.report.failures.push(format!(
                "{}: killed before it held the update",
                self.members[k.index].id
            ));
            u.via = Some(Delivery::Disk);
        }
    }

    /// Names every device that does not hold the whole update when the time is up.
    fn report_incomplete(&mut self) {
        for (i, m) in self.members.iter().enumerate() {
            let u = self.snapshots[i]
                .as_ref()
                .and_then(|s| s.updates.get(UPDATE_ID));
            if u.is_none_or(|u| u.via.is_none()) {
                self.report.failures.push(format!(
                    "{}: update incomplete after the time allowed ({:?})",
                    m.id, u
                ));
            }
        }
    }
}
