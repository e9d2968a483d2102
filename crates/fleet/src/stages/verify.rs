//! The verification stage: every device's copy of the update read back and hashed here,
//! and the report's figures (bytes sent by each tier, how each device got the update) taken
//! from the devices' last distribution status.

use std::path::PathBuf;

use outpost_agent::distribution::Delivery;

use super::Fleet;
use crate::UPDATE_ID;
use crate::tenants::served;

impl<L: FnMut(String)> Fleet<'_, L> {
    /// Verification: every device's file hashed against `sha256`, the update's; the bytes
    /// each tier sent and how each device got the update.
    pub(crate) async fn verify(&mut self, sha256: &[u8]) {
        // Every device's file, read back and hashed here.
        let copies = self
            .members
            .iter()
            .map(|m| (m.id.clone(), m.dir.join("updates").join(UPDATE_ID)))
            .collect();
        let (delivered, wrong) = verify_copies(copies, sha256).await;
        let report = &mut self.report;
        report.delivered_bytes += delivered;
        report.failures.extend(wrong);
        for s in self.snapshots.iter().flatten() {
            report.multicast_bytes += s.sent.iter().map(|x| x.bytes_sent).sum::<u64>();
            report.dp_unicast_bytes += s.unicast_bytes_served;
            if let Some(u) = s.updates.get(UPDATE_ID) {
                report.fetched_blocks += u64::from(u.fetched_blocks);
                report.resumed_blocks += u64::from(u.resumed_blocks);
                let via = match u.via {
                    Some(Delivery::Multicast) => "multicast",
                    Some(Delivery::Dp) => "DP unicast",
                    Some(Delivery::Server) => "server",
                    Some(Delivery::Disk) => "disk",
                    Some(_) | None => "nothing",
                };
                *report.via.entry(via.into()).or_default() += 1;
            }
        }
        report.server_egress_bytes = served(&self.services);
        self.end_stage("verification (every file hashed)");
    }
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
    use crate::report::FleetReport;

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
