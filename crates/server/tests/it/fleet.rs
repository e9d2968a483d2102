//! The composed sync source: settings, DP roles and updates in one answer.

use bytes::Bytes;
use outpost_election::{ElectionConfig, SyncIntervalPolicy};
use outpost_gateway::Via;
use outpost_policy::{Resolver, State};
use outpost_server::{DeviceContext, DpCoordinator, FleetSync, PolicySync, Registry, SyncSource};
use outpost_wire::messages::{DpStatus, HeldVersion, ObjectKind, SyncRequest, UpdateAnnouncement};

#[test]
fn one_answer_carries_settings_roles_and_missing_updates() {
    let mut reg = Registry::new("s").unwrap();
    reg.add_group("office", "Office", None).unwrap();
    let state = State::from_json(
        br#"{"schemas": [{"app": "agent", "settings": {"quiet": {"type": "bool", "default": false}}}],
             "groups": [{"id": "office"}],
             "devices": [{"id": "dp-1", "group": "office"}, {"id": "pc-1", "group": "office"}]}"#,
    )
    .unwrap();
    let policy = PolicySync::new(
        Resolver::new(&state).unwrap(),
        SyncIntervalPolicy::default(),
    );
    let mut dps = DpCoordinator::new(ElectionConfig::default(), &reg).unwrap();
    dps.place("dp-1", "office").unwrap();
    dps.place("pc-1", "office").unwrap();
    dps.register_group_dp("dp-1", "office").unwrap();
    let fleet = FleetSync::new(Some(policy), Some(dps), SyncIntervalPolicy::default());
    let update = UpdateAnnouncement {
        object_id: "sig".into(),
        name: "signatures".into(),
        version: 3,
        size: 10,
        sha256: Bytes::from(vec![7; 32]),
    };
    fleet.publish_update(update.clone());

    let dp_ctx = DeviceContext::new("dp-1", "office", Via::Direct, 2);
    let hb = SyncRequest {
        free_disk_bytes: 100 << 30,
        dp_status: vec![DpStatus::default()],
        ..Default::default()
    };
    let r = fleet.sync(&dp_ctx, &hb);
    assert_eq!(r.settings.len(), 1);
    assert_eq!(r.updates, vec![update.clone()]);
    assert!(
        r.assignments
            .iter()
            .any(|a| a.dp_device_id == "dp-1" && a.role == 1),
        "dp-1 is active"
    );
    // A DP's sync is its heartbeat: it is asked back at the heartbeat interval.
    assert_eq!(
        u64::from(r.next_sync_secs),
        ElectionConfig::default().heartbeat_interval_secs
    );

    // A device that holds the update is not told again; it is served by dp-1.
    let pc = DeviceContext::new("pc-1", "office", Via::Direct, 2);
    // Its sync says it holds version 3 of the update.
    let holding_v3 = SyncRequest {
        held: vec![HeldVersion {
            kind: ObjectKind::Update as i32,
            id: "sig".into(),
            version: 3,
        }],
        ..Default::default()
    };
    let r = fleet.sync(&pc, &holding_v3);
    assert_eq!(r.next_sync_secs, 900, "not a DP: the fleet's interval");
    assert!(r.updates.is_empty());
    assert_eq!(r.assignments.len(), 1);
    assert_eq!(r.assignments[0].dp_device_id, "dp-1");
    // A newer version replaces the announcement.
    fleet.publish_update(UpdateAnnouncement {
        version: 4,
        ..update
    });
    let r = fleet.sync(&pc, &holding_v3);
    assert_eq!(r.updates.len(), 1);
    assert_eq!(r.updates[0].version, 4);
}
