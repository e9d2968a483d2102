//! Sync answered from policies.

use crate::common;

use outpost_election::SyncIntervalPolicy;
use outpost_gateway::Via;
use outpost_policy::{Change, Policy, PolicySetting, Resolver, State, Value};
use outpost_server::{DeviceContext, PolicySync, SyncSource};
use outpost_wire::messages::{HeldVersion, ObjectKind, SyncRequest};

const STATE: &str = r#"{
  "schemas": [
    {"app": "endpoint", "settings": {
        "device_control.flash_drives": {"type": "bool", "default": true},
        "scan.interval_hours": {"type": "int", "default": 24, "min": 1, "max": 168}}},
    {"app": "agent", "settings": {"sync.quiet": {"type": "bool", "default": false}}}
  ],
  "groups": [{"id": "company"}, {"id": "accounting", "parent": "company"}, {"id": "lab", "parent": "company"}],
  "policies": [{
      "id": "accountants", "app": "endpoint", "group": "accounting",
      "settings": {"device_control.flash_drives": {"value": false, "locked": true}},
      "profiles": [{"name": "senior accountants", "condition": {"tags": {"names": ["senior"]}},
                    "settings": {"device_control.flash_drives": true}}]}],
  "devices": [{"id": "pc-junior", "group": "accounting"},
              {"id": "pc-senior", "group": "accounting", "tags": ["senior"]},
              {"id": "pc-lab", "group": "lab"}]
}"#;

fn ctx(device: &str, fleet: u64) -> DeviceContext {
    DeviceContext::new(device, "accounting", Via::Direct, fleet)
}

fn source() -> PolicySync {
    let state = State::from_json(STATE.as_bytes()).unwrap();
    PolicySync::new(
        Resolver::new(&state).unwrap(),
        SyncIntervalPolicy::default(),
    )
}

fn held(resp: &outpost_wire::messages::SyncResponse) -> Vec<HeldVersion> {
    resp.settings
        .iter()
        .map(|s| HeldVersion {
            kind: ObjectKind::Settings as i32,
            id: s.application.clone(),
            version: s.version,
        })
        .collect()
}

#[test]
fn only_changed_documents_are_sent_with_their_locks() {
    let sync = source();
    let first = sync.sync(&ctx("pc-junior", 1), &SyncRequest::default());
    let apps: Vec<&str> = first
        .settings
        .iter()
        .map(|s| s.application.as_str())
        .collect();
    assert_eq!(apps, ["agent", "endpoint"]);
    let endpoint: serde_json::Value = serde_json::from_slice(&first.settings[1].json).unwrap();
    assert_eq!(endpoint["values"]["device_control"]["flash_drives"], false);
    assert_eq!(
        endpoint["locked"],
        serde_json::json!(["device_control.flash_drives"])
    );
    // The bytes are those of the object with sorted keys that servers have always sent:
    // versions are their digest, so an upgraded server does not resend every document.
    let legacy = serde_json::json!({"values": endpoint["values"], "locked": endpoint["locked"]});
    assert_eq!(first.settings[1].json, serde_json::to_vec(&legacy).unwrap());
    let doc = outpost_wire::settings::SettingsDocument::parse(&first.settings[1].json).unwrap();
    assert_eq!(doc.locked, ["device_control.flash_drives"]);
    // Holding what it was given, the device gets nothing new.
    let again = sync.sync(
        &ctx("pc-junior", 1),
        &SyncRequest {
            held: held(&first),
            ..Default::default()
        },
    );
    assert!(again.settings.is_empty() && again.removed_settings.is_empty());
    // The senior accountant's profile allows flash drives.
    let senior = sync.sync(&ctx("pc-senior", 1), &SyncRequest::default());
    let doc: serde_json::Value = serde_json::from_slice(&senior.settings[1].json).unwrap();
    assert_eq!(doc["values"]["device_control"]["flash_drives"], true);
    // An application the device holds but no longer has is removed.
    let mut stale = held(&first);
    stale.push(HeldVersion {
        kind: ObjectKind::Settings as i32,
        id: "retired-app".into(),
        version: 1,
    });
    let r = sync.sync(
        &ctx("pc-junior", 1),
        &SyncRequest {
            held: stale,
            ..Default::default()
        },
    );
    assert_eq!(r.removed_settings, ["retired-app"]);
    // A device the policies do not know (a server fault: every enrolled device is placed)
    // gets nothing new and is never told to drop what it holds.
    let r = sync.sync(
        &ctx("stranger", 1),
        &SyncRequest {
            held: held(&first),
            ..Default::default()
        },
    );
    assert!(r.settings.is_empty());
    assert!(r.removed_settings.is_empty(), "{:?}", r.removed_settings);
}

#[test]
fn registry_devices_are_placed_in_their_registry_groups() {
    use outpost_server::{Registry, place_registry_devices};
    let mut state = State::from_json(STATE.as_bytes()).unwrap();
    let mut reg = Registry::new("server-1").unwrap();
    // "accounting" is known to the policies (under "company"); "night-shift" and its parent
    // "remote" are only in the registry.
    reg.add_group("accounting", "Accounting", None).unwrap();
    reg.add_group("remote", "Remote", None).unwrap();
    reg.add_group("night-shift", "Night shift", Some("remote"))
        .unwrap();
    let sync_with = |reg: &Registry| {
        let mut state = state.clone();
        place_registry_devices(&mut state, reg);
        PolicySync::new(
            Resolver::new(&state).unwrap(),
            SyncIntervalPolicy::default(),
        )
    };
    // Enrolled devices, through the public path a server takes (a token, then enrollment).
    let ca = outpost_pki::ServerCa::create(
        outpost_pki::PkiConfig::default(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    for (device, group) in [
        ("laptop-7", "accounting"),
        ("pc-lab", "accounting"),
        ("owl-1", "night-shift"),
    ] {
        let now = std::time::SystemTime::now();
        let token = reg
            .issue_token(group, None, std::time::Duration::from_secs(60), now)
            .unwrap();
        let req = common::enroll_request(device, &token);
        outpost_server::enroll(&mut reg, &ca, &req, now).unwrap();
    }
    let sync = sync_with(&reg);
    // A device only the registry knows gets its group's policy.
    let laptop = sync.effective("laptop-7").expect("placed");
    assert_eq!(
        laptop.get("endpoint", "device_control.flash_drives"),
        Some(&Value::Bool(false))
    );
    // A device the policy state put in "lab" is where the registry says: accounting.
    let lab = sync.effective("pc-lab").expect("placed");
    assert_eq!(
        lab.get("endpoint", "device_control.flash_drives"),
        Some(&Value::Bool(false))
    );
    // A device in a group only the registry has is known, with the defaults.
    assert!(sync.effective("owl-1").is_some());
    // Devices the state describes and the registry does not stay as they were.
    assert!(sync.effective("pc-senior").is_some());
    // Placing is idempotent: a second pass adds no duplicate group or device.
    place_registry_devices(&mut state, &reg);
    let groups = state.groups.len();
    let devices = state.devices.len();
    place_registry_devices(&mut state, &reg);
    assert_eq!((state.groups.len(), state.devices.len()), (groups, devices));
    Resolver::new(&state).unwrap();
}

#[test]
fn an_edit_names_exactly_the_devices_to_push_and_changes_their_documents() {
    let sync = source();
    let before = sync.sync(&ctx("pc-lab", 1), &SyncRequest::default());
    let policy = Policy::new("lab-scan", "endpoint", "lab")
        .with("scan.interval_hours", PolicySetting::locked(Value::Int(4)));
    let changed = sync.apply(Change::UpsertPolicy(policy)).unwrap();
    assert_eq!(changed, [std::sync::Arc::<str>::from("pc-lab")]);
    let after = sync.sync(
        &ctx("pc-lab", 1),
        &SyncRequest {
            held: held(&before),
            ..Default::default()
        },
    );
    assert_eq!(
        after.settings.len(),
        1,
        "only the endpoint document changed"
    );
    let doc: serde_json::Value = serde_json::from_slice(&after.settings[0].json).unwrap();
    assert_eq!(doc["values"]["scan"]["interval_hours"], 4);
}

#[test]
fn the_sync_interval_grows_with_the_fleet() {
    let sync = source();
    assert_eq!(
        sync.sync(&ctx("pc-lab", 500), &SyncRequest::default())
            .next_sync_secs,
        900
    );
    assert_eq!(
        sync.sync(&ctx("pc-lab", 20_000), &SyncRequest::default())
            .next_sync_secs,
        1800
    );
    assert_eq!(
        sync.sync(&ctx("pc-lab", 100_000), &SyncRequest::default())
            .next_sync_secs,
        9000
    );
}
