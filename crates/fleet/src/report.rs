//! What a run measured and found: the time of each stage, the bytes each tier sent, how
//! every device got the update, the failover's timings and every device that ended wrong.

use std::collections::BTreeMap;

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
