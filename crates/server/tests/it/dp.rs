//! Distribution points chosen from the agents' syncs.

use std::time::{Duration, Instant};

use outpost_election::ElectionConfig;
use outpost_server::{DpCoordinator, Registry};
use outpost_wire::messages::{DpAssignment, DpRole, DpStatus, SyncRequest};

const GIB: u64 = 1 << 30;

fn registry() -> Registry {
    let mut r = Registry::new("s").unwrap();
    r.add_group("office", "Office", None).unwrap();
    r.add_group("office-2f", "Second floor", Some("office"))
        .unwrap();
    r
}

fn heartbeat(free_gib: u64) -> SyncRequest {
    SyncRequest {
        free_disk_bytes: free_gib * GIB,
        uptime_secs: 3600,
        dp_status: vec![DpStatus::default()],
        ..Default::default()
    }
}

/// The DP's own role: its own entries come before the "served by" entry.
fn own(a: &[DpAssignment], dp: &str) -> Option<(DpRole, u64)> {
    a.iter()
        .find(|x| x.dp_device_id == dp)
        .map(|x| (DpRole::try_from(x.role).unwrap(), x.epoch))
}

#[test]
fn failover_with_fencing_from_syncs() {
    let mut c = DpCoordinator::new(ElectionConfig::default(), &registry()).unwrap();
    for (d, g) in [
        ("dp-a", "office"),
        ("dp-b", "office"),
        ("pc-1", "office-2f"),
    ] {
        c.place(d, g).unwrap();
    }
    let ga = c.register_group_dp("dp-a", "office").unwrap();
    let gb = c.register_group_dp("dp-b", "office").unwrap();
    assert_ne!(ga, gb, "each DP has its own multicast group");
    let t0 = Instant::now();

    // Both report healthy; dp-a (lower id on equal facts) becomes active, dp-b standby.
    c.on_sync("dp-a", &heartbeat(50), t0);
    let b = c.on_sync("dp-b", &heartbeat(50), t0);
    let a = c.on_sync("dp-a", &heartbeat(50), t0 + Duration::from_secs(1));
    let (role_a, epoch1) = own(&a, "dp-a").unwrap();
    assert_eq!(role_a, DpRole::Active);
    assert_eq!(own(&b, "dp-b").map(|x| x.0), Some(DpRole::Standby));
    // The standby takes files from the active DP; the active one from the server.
    assert!(
        b.iter()
            .any(|x| x.dp_device_id == "dp-b" && x.upstream == "dp-a")
    );
    assert!(a.iter().any(|x| x.dp_device_id == "dp-a"
        && x.upstream == "server"
        && x.multicast_group == ga.to_string()));

    // A device below the scope is served by the active DP, and learns the key that signs
    // that DP's multicast sessions.
    let key_a = bytes::Bytes::from(vec![0xA1; 32]);
    let mut hb = heartbeat(50);
    hb.dp_status[0].signing_key = key_a.clone();
    c.on_sync("dp-a", &hb, t0 + Duration::from_secs(1));
    let pc = c.on_sync("pc-1", &SyncRequest::default(), t0 + Duration::from_secs(2));
    assert_eq!(pc.len(), 1);
    assert_eq!(pc[0].dp_device_id, "dp-a");
    assert_eq!(pc[0].epoch, epoch1);
    assert_eq!(pc[0].signing_key, key_a);

    // dp-a falls silent; dp-b keeps syncing. After missed heartbeats dp-b is active.
    let down_after = ElectionConfig::default().down_after();
    let mut t = t0 + Duration::from_secs(2);
    let mut promoted = None;
    for _ in 0..10 {
        t += Duration::from_secs(60);
        let b = c.on_sync("dp-b", &heartbeat(50), t);
        if let Some((DpRole::Active, e)) = own(&b, "dp-b") {
            promoted = Some((t, e));
            break;
        }
    }
    let (when, epoch2) = promoted.expect("standby promoted");
    assert!(epoch2 > epoch1, "a change of active raises the epoch");
    assert!(
        when - t0 <= down_after + Duration::from_secs(62),
        "replaced within the missed heartbeats"
    );
    // The old active learns at its next sync that it was replaced (higher epoch, not active).
    let a = c.on_sync("dp-a", &heartbeat(50), t + Duration::from_secs(1));
    let (role, epoch) = own(&a, "dp-a").unwrap();
    assert_ne!(role, DpRole::Active);
    assert!(epoch >= epoch2);
    // The device follows.
    let pc = c.on_sync("pc-1", &SyncRequest::default(), t + Duration::from_secs(2));
    assert_eq!(pc[0].dp_device_id, "dp-b");

    // Short of disk, a DP cannot be active.
    let mut c2 = DpCoordinator::new(ElectionConfig::default(), &registry()).unwrap();
    c2.place("dp-x", "office").unwrap();
    c2.register_group_dp("dp-x", "office").unwrap();
    let x = c2.on_sync("dp-x", &heartbeat(1), t0);
    assert_ne!(own(&x, "dp-x").map(|x| x.0), Some(DpRole::Active));
    assert!(matches!(
        c2.place("dp-x", "nowhere"),
        Err(outpost_server::ServerError::UnknownGroup(_))
    ));
}

/// Drives `c` until `dp-b` replaces a silent `dp-a`; returns the epoch dp-b got.
fn fail_over(c: &mut DpCoordinator, t0: Instant) -> u64 {
    c.on_sync("dp-a", &heartbeat(50), t0);
    c.on_sync("dp-b", &heartbeat(50), t0);
    let mut t = t0;
    for _ in 0..10 {
        t += Duration::from_secs(60);
        if let Some((DpRole::Active, e)) = own(&c.on_sync("dp-b", &heartbeat(50), t), "dp-b") {
            return e;
        }
    }
    panic!("standby not promoted");
}

fn coordinator() -> DpCoordinator {
    let mut c = DpCoordinator::new(ElectionConfig::default(), &registry()).unwrap();
    for d in ["dp-a", "dp-b"] {
        c.place(d, "office").unwrap();
        c.register_group_dp(d, "office").unwrap();
    }
    c
}

#[test]
fn epochs_survive_a_restart_of_the_coordinator() {
    use outpost_server::{DatabaseConfig, Storage};
    let dir = tempfile::tempdir().unwrap();
    let db = DatabaseConfig::sqlite_in(dir.path());
    let storage = Storage::open(&db, "s").unwrap();
    let mut c = coordinator();
    c.keep_epochs(storage.clone(), storage.load().unwrap().epochs);
    let before = fail_over(&mut c, Instant::now());
    assert!(before >= 2, "a failover raised the epoch: {before}");
    drop(c);
    drop(storage);

    // After a restart (the database opened again) the first assignment's epoch is above
    // every epoch handed out before, so a DP that kept running (fencing on the highest
    // epoch it saw) accepts it.
    let storage = Storage::open(&db, "s").unwrap();
    let kept = storage.load().unwrap().epochs;
    assert_eq!(
        kept.get("office"),
        Some(&before),
        "the raised epoch was committed"
    );
    let mut c = coordinator();
    c.keep_epochs(storage, kept);
    let t = Instant::now();
    c.on_sync("dp-a", &heartbeat(50), t);
    let a = c.on_sync("dp-a", &heartbeat(50), t + Duration::from_secs(1));
    let (_, epoch) = own(&a, "dp-a").unwrap();
    assert!(
        epoch > before,
        "epoch {epoch} after the restart, {before} before"
    );

    // Without the stored epochs they start again from the bottom: what storing prevents.
    let mut fresh = coordinator();
    fresh.on_sync("dp-a", &heartbeat(50), t);
    let a = fresh.on_sync("dp-a", &heartbeat(50), t + Duration::from_secs(1));
    assert!(own(&a, "dp-a").unwrap().1 <= before);
}

#[test]
fn a_damaged_epoch_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dp-epochs.json");
    assert!(outpost_server::read_epoch_file(&path).unwrap().is_none());
    std::fs::write(&path, br#"{"office": 7}"#).unwrap();
    let kept = outpost_server::read_epoch_file(&path).unwrap().unwrap();
    assert_eq!(kept.get("office"), Some(&7));
    std::fs::write(&path, b"{ not json").unwrap();
    let e = outpost_server::read_epoch_file(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dp-epochs.json"), "{e}");
}

#[test]
fn a_distribution_point_low_on_disk_is_a_stored_security_issue_until_it_recovers() {
    use outpost_server::{DatabaseConfig, Storage};
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&DatabaseConfig::sqlite_in(dir.path()), "s").unwrap();
    let mut c = coordinator();
    c.keep_epochs(storage.clone(), Default::default());
    let t = Instant::now();
    // 1 GiB free: under the 2 GiB warning threshold.
    c.on_sync("dp-a", &heartbeat(1), t);
    // Queued in order: once this empty commit is done, so are they.
    storage.commit_blocking(Vec::new()).unwrap();
    let issues = storage.load().unwrap().issues;
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(
        (issues[0].device.as_str(), issues[0].kind.as_str()),
        ("dp-a", "dp.low_disk")
    );
    assert_eq!(
        issues[0].severity,
        outpost_wire::messages::Severity::Warning as i32
    );
    // Reported again while still low: one issue, one event.
    c.on_sync("dp-a", &heartbeat(1), t + Duration::from_secs(1));
    c.on_sync("dp-a", &heartbeat(50), t + Duration::from_secs(2));
    storage.commit_blocking(Vec::new()).unwrap();
    assert!(
        storage.load().unwrap().issues.is_empty(),
        "closed once it recovered"
    );
    let kinds: Vec<String> = storage
        .events_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert_eq!(kinds, ["dp.low_disk", "dp.low_disk.cleared"]);
}

/// The DP serving `device` according to its sync answer: the entry naming another DP, or
/// its own active one.
fn served_by(a: &[DpAssignment], device: &str) -> Option<(String, i32)> {
    a.iter()
        .rfind(|x| x.dp_device_id != device || x.role == DpRole::Active as i32)
        .map(|x| {
            (
                x.dp_device_id.clone(),
                x.scope.as_ref().map_or(0, |s| s.kind),
            )
        })
}

fn with_peers(mut req: SyncRequest, peers: &[&str]) -> SyncRequest {
    req.visible_peers = peers.iter().map(|p| p.to_string()).collect();
    req
}

#[test]
fn a_network_location_is_served_before_the_group_and_a_broadcast_domain_after() {
    use outpost_server::DpScope;
    use outpost_wire::messages::ScopeKind;
    let mut c = DpCoordinator::new(ElectionConfig::default(), &registry()).unwrap();
    for d in ["dp-group", "dp-lab", "dp-seg", "pc-1", "pc-2", "pc-3"] {
        c.place(d, if d == "pc-3" { "office" } else { "office-2f" })
            .unwrap();
    }
    c.register("dp-group", &DpScope::Group("office-2f".into()))
        .unwrap();
    c.register("dp-lab", &DpScope::NetworkLocation("lab".into()))
        .unwrap();
    assert_eq!(
        c.register("dp-seg", &DpScope::OwnBroadcastDomain).unwrap(),
        None,
        "no domain before the discovery reports"
    );
    c.set_location("pc-1", Some("lab")).unwrap();
    let t0 = Instant::now();
    // dp-seg and pc-3 hear each other: one broadcast domain, which dp-seg serves.
    for (i, d) in ["dp-group", "dp-lab"].into_iter().enumerate() {
        c.on_sync(d, &heartbeat(50), t0 + Duration::from_millis(i as u64));
    }
    c.on_sync("dp-seg", &with_peers(heartbeat(50), &["pc-3"]), t0);
    c.on_sync("pc-3", &with_peers(SyncRequest::default(), &["dp-seg"]), t0);
    c.tick(t0 + Duration::from_secs(1));
    let t1 = t0 + Duration::from_secs(2);
    for d in ["dp-group", "dp-lab", "dp-seg"] {
        c.on_sync(
            d,
            &with_peers(heartbeat(50), if d == "dp-seg" { &["pc-3"] } else { &[] }),
            t1,
        );
    }

    // pc-1 is in the lab: the location's DP, though its group has one too.
    let a = c.on_sync("pc-1", &SyncRequest::default(), t1);
    assert_eq!(
        served_by(&a, "pc-1"),
        Some(("dp-lab".into(), ScopeKind::NetworkLocation as i32))
    );
    // pc-2: its group's DP.
    let a = c.on_sync("pc-2", &SyncRequest::default(), t1);
    assert_eq!(
        served_by(&a, "pc-2"),
        Some(("dp-group".into(), ScopeKind::Group as i32))
    );
    // pc-3: no DP in its group "office"; its broadcast domain's.
    let a = c.on_sync("pc-3", &with_peers(SyncRequest::default(), &["dp-seg"]), t1);
    assert_eq!(
        served_by(&a, "pc-3"),
        Some(("dp-seg".into(), ScopeKind::BroadcastDomain as i32))
    );
    let report = c.report();
    let row = |d: &str| report.iter().find(|r| r.device == d).unwrap().clone();
    assert_eq!(row("dp-lab").scope, DpScope::NetworkLocation("lab".into()));
    assert_eq!(row("dp-seg").scope, DpScope::OwnBroadcastDomain);
    assert_eq!(row("dp-seg").domain.as_deref(), Some("dp-seg"));
    assert_eq!(row("dp-seg").role, "active");
    assert_eq!(row("dp-seg").devices_served, 1);

    // Out of the lab: back to the group's DP. Out of the segment (no more peers): no DP.
    c.set_location("pc-1", None).unwrap();
    let a = c.on_sync("pc-1", &SyncRequest::default(), t1);
    assert_eq!(served_by(&a, "pc-1").map(|s| s.0), Some("dp-group".into()));
    c.on_sync("pc-3", &SyncRequest::default(), t1);
    c.on_sync("dp-seg", &heartbeat(50), t1);
    c.tick(t1 + Duration::from_secs(1));
    let a = c.on_sync("pc-3", &SyncRequest::default(), t1 + Duration::from_secs(1));
    assert_eq!(served_by(&a, "pc-3"), None, "{a:?}");
    // And a location DP made active by hand gets a new epoch.
    let epoch = c
        .make_active("dp-lab", &DpScope::NetworkLocation("lab".into()), t1)
        .unwrap();
    assert!(epoch > 0);
    c.unregister("dp-lab", &DpScope::NetworkLocation("lab".into()))
        .unwrap();
    assert!(c.report().iter().all(|r| r.device != "dp-lab"));
}

/// A failover in one group tells that group's DPs and the devices they serve, and nobody in
/// another group.
#[test]
fn a_failover_tells_only_the_devices_it_changes() {
    let mut r = registry();
    r.add_group("warehouse", "Warehouse", None).unwrap();
    let mut c = DpCoordinator::new(ElectionConfig::default(), &r).unwrap();
    for (d, g) in [
        ("dp-a", "office"),
        ("dp-b", "office"),
        ("pc-1", "office-2f"),
        ("dp-w", "warehouse"),
        ("pc-w", "warehouse"),
    ] {
        c.place(d, g).unwrap();
    }
    for (d, g) in [
        ("dp-a", "office"),
        ("dp-b", "office"),
        ("dp-w", "warehouse"),
    ] {
        c.register_group_dp(d, g).unwrap();
    }
    let t0 = Instant::now();
    for d in ["dp-a", "dp-b", "dp-w"] {
        c.on_sync(d, &heartbeat(50), t0);
    }
    let first = c.tick(t0 + Duration::from_secs(1));
    assert_eq!(
        first,
        ["dp-a", "dp-b", "dp-w", "pc-1", "pc-w"],
        "the first decisions change everyone's answer"
    );
    assert!(
        c.tick(t0 + Duration::from_secs(2)).is_empty(),
        "nothing new"
    );

    // dp-a falls silent while dp-b and dp-w keep syncing: office fails over.
    let mut t = t0 + Duration::from_secs(2);
    let mut told = Vec::new();
    for _ in 0..20 {
        t += Duration::from_secs(30);
        c.on_sync("dp-b", &heartbeat(50), t);
        c.on_sync("dp-w", &heartbeat(50), t);
        told = c.tick(t);
        if !told.is_empty() {
            break;
        }
    }
    assert_eq!(told, ["dp-a", "dp-b", "pc-1"], "the warehouse is not told");
}
