//! Whatever the administrator does, the registry stays loadable and round-trips.

use std::time::{Duration, SystemTime};

use outpost_server::Registry;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Add(u8, Option<u8>),
    Move(u8, u8),
    Token(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12, proptest::option::of(0u8..12)).prop_map(|(a, b)| Op::Add(a, b)),
        (0u8..12, 0u8..12).prop_map(|(a, b)| Op::Move(a, b)),
        (0u8..12).prop_map(Op::Token),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_history_saves_and_reloads(ops in proptest::collection::vec(op(), 0..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut reg = Registry::new("s").unwrap();
        let name = |i: u8| format!("g{i}");
        for o in ops {
            // Errors (unknown group, duplicate, cycle) are refusals; the state must stay valid.
            let _ = match o {
                Op::Add(a, p) => reg.add_group(&name(a), "G", p.map(name).as_deref()).map(|_| ()),
                Op::Move(a, p) => reg.move_group(&name(a), &name(p)),
                Op::Token(g) => reg.issue_token(&name(g), None, Duration::from_secs(5), SystemTime::now()).map(|_| ()),
            };
        }
        reg.save(&path).unwrap();
        let back = Registry::load(&path).unwrap().unwrap();
        prop_assert_eq!(back, reg);
    }
}

use crate::common;

/// What administrators and devices of several virtual servers do.
#[derive(Debug, Clone)]
enum TenantOp {
    /// Tenant `t` adds group `g`.
    Group(usize, u8),
    /// A device `d` enrolls with a token tenant `t` issued for group `g` (through the main
    /// service, which routes it by token).
    Enroll(usize, u8, u8),
    /// Tenant `t` sets the level of group `g`'s policy to `v`.
    Policy(usize, u8, u8),
    /// Tenant `t` makes its device `d` a distribution point of its group.
    Dp(usize, u8),
    /// Tenant `t` publishes an update.
    Update(usize, u8),
}

const TENANTS: [&str; 3] = ["main", "acme", "globex"];

fn tenant_op() -> impl Strategy<Value = TenantOp> {
    let t = 0..TENANTS.len();
    prop_oneof![
        (t.clone(), 0u8..3).prop_map(|(t, g)| TenantOp::Group(t, g)),
        (t.clone(), 0u8..4, 0u8..3).prop_map(|(t, d, g)| TenantOp::Enroll(t, d, g)),
        (t.clone(), 0u8..3, 1u8..50).prop_map(|(t, g, v)| TenantOp::Policy(t, g, v)),
        (t.clone(), 0u8..4).prop_map(|(t, d)| TenantOp::Dp(t, d)),
        (t, 0u8..3).prop_map(|(t, u)| TenantOp::Update(t, u)),
    ]
}

/// The level a policy of tenant `t` sets: each tenant's values are its own.
fn level(t: usize, v: u8) -> i64 {
    (t as i64 + 1) * 1000 + i64::from(v)
}

async fn tenants_run(ops: Vec<TenantOp>) -> Result<(), TestCaseError> {
    use outpost_server::{AdminServer, Tenant};
    use std::collections::{BTreeMap, BTreeSet};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    common::init_state(base, SystemTime::now());
    std::fs::write(
        base.join("policies.json"),
        serde_json::json!({"schemas": [{"app": "endpoint", "settings": {"scan.level": {"type": "int", "default": 0}}}],
               "groups": [{"id": "root"}]})
        .to_string(),
    )
    .unwrap();
    let config = common::server_config(r#"policy_state = "policies.json""#, "");
    let running = AdminServer::start(config, base, None, None).await.unwrap();
    let servers = running.virtual_servers().clone();
    for id in &TENANTS[1..] {
        servers.create(id, id).await.unwrap();
    }
    let tenant = |t: usize| -> std::sync::Arc<Tenant> {
        if t == 0 {
            servers.main().clone()
        } else {
            servers.get(TENANTS[t]).unwrap()
        }
    };
    // The model: what each tenant holds.
    let mut groups: Vec<BTreeSet<String>> = vec![BTreeSet::new(); TENANTS.len()];
    let mut devices: Vec<BTreeMap<String, [u8; 32]>> = vec![BTreeMap::new(); TENANTS.len()];
    let mut updates: Vec<BTreeSet<String>> = vec![BTreeSet::new(); TENANTS.len()];
    for op in ops {
        match op {
            TenantOp::Group(t, g) => {
                let id = format!("g{g}");
                if tenant(t).service().add_group(&id, "G", None).await.is_ok() {
                    groups[t].insert(id);
                }
            }
            TenantOp::Enroll(t, d, g) => {
                let (device, group) = (format!("pc-{d}"), format!("g{g}"));
                let vs = tenant(t);
                let token = vs.service().update_registry(|r| {
                    r.issue_token(&group, None, Duration::from_secs(60), SystemTime::now())
                });
                let Ok(token) = token.await else { continue };
                let req = common::enroll_request(&device, &token);
                match servers
                    .main()
                    .service()
                    .enroll_routed(&req, "127.0.0.1:1")
                    .await
                {
                    Ok(resp) => {
                        let who =
                            outpost_pki::PeerIdentity::from_der(&resp.certificate_der).unwrap();
                        let bound = who.virtual_server.as_deref().unwrap_or("main");
                        prop_assert_eq!(
                            bound,
                            TENANTS[t],
                            "the certificate names the token's tenant"
                        );
                        prop_assert!(!devices[t].contains_key(&device));
                        devices[t].insert(device, who.sha256);
                    }
                    Err(_) => prop_assert!(
                        devices[t].contains_key(&device),
                        "only a duplicate is refused"
                    ),
                }
            }
            TenantOp::Policy(t, g, v) => {
                let group = format!("g{g}");
                let p: outpost_policy::Policy = serde_json::from_value(serde_json::json!({
                    "id": format!("p-{group}"), "app": "endpoint", "group": group,
                    "settings": {"scan.level": {"value": level(t, v)}}
                }))
                .unwrap();
                let fleet = tenant(t).fleet().unwrap().clone();
                let _ = fleet
                    .policy()
                    .unwrap()
                    .apply(outpost_policy::Change::UpsertPolicy(p));
            }
            TenantOp::Dp(t, d) => {
                let device = format!("pc-{d}");
                let vs = tenant(t);
                let Some(group) = vs
                    .service()
                    .with_registry(|r| r.device(&device).map(|x| x.group.clone()))
                else {
                    continue;
                };
                let scope = outpost_server::DpScope::parse(&group).unwrap();
                if vs
                    .service()
                    .update_registry(|r| r.register_dp_scope(&device, &scope))
                    .await
                    .is_ok()
                {
                    let _ = vs
                        .fleet()
                        .unwrap()
                        .with_dps(|c| c.register(&device, &scope));
                }
            }
            TenantOp::Update(t, u) => {
                let id = format!("{}-update-{u}", TENANTS[t]);
                let a = outpost_wire::messages::UpdateAnnouncement {
                    object_id: id.clone(),
                    version: 1,
                    ..Default::default()
                };
                tenant(t).fleet().unwrap().publish_update(a);
                updates[t].insert(id);
            }
        }
        // Every read stays inside its tenant.
        for t in 0..TENANTS.len() {
            let vs = tenant(t);
            let (held_groups, held_devices) = vs.service().with_registry(|r| {
                (
                    r.groups()
                        .keys()
                        .filter(|g| *g != outpost_server::ROOT_GROUP)
                        .cloned()
                        .collect::<BTreeSet<_>>(),
                    r.devices().keys().cloned().collect::<BTreeSet<_>>(),
                )
            });
            prop_assert_eq!(&held_groups, &groups[t]);
            prop_assert_eq!(
                &held_devices,
                &devices[t].keys().cloned().collect::<BTreeSet<_>>()
            );
            let block = vs
                .record()
                .map(|r| servers.config().block(r.multicast_block).unwrap());
            for (device, sha) in &devices[t] {
                // Another tenant's registry never knows this certificate.
                for (o, other) in servers.all().iter().enumerate() {
                    let known = other
                        .service()
                        .sync_known(sha, &Default::default())
                        .is_some();
                    prop_assert_eq!(
                        known,
                        other.id() == vs.id(),
                        "{} of {} in tenant {}",
                        device,
                        TENANTS[t],
                        o
                    );
                }
                let answer = vs.service().sync_known(sha, &Default::default()).unwrap();
                for s in &answer.settings {
                    let doc: serde_json::Value = serde_json::from_slice(&s.json).unwrap();
                    let l = doc["values"]["scan"]["level"].as_i64().unwrap();
                    prop_assert!(
                        l == 0 || l / 1000 == t as i64 + 1,
                        "{device} of {} holds level {l}",
                        TENANTS[t]
                    );
                }
                for u in &answer.updates {
                    prop_assert!(
                        updates[t].contains(&u.object_id),
                        "{device} of {} offered {}",
                        TENANTS[t],
                        u.object_id
                    );
                }
                for a in &answer.assignments {
                    prop_assert!(
                        devices[t].contains_key(&a.dp_device_id),
                        "DP {} of another tenant",
                        a.dp_device_id
                    );
                    if let (Some(b), Ok(ip)) =
                        (block, a.multicast_group.parse::<std::net::IpAddr>())
                    {
                        prop_assert!(
                            b.first <= ip && ip <= b.last,
                            "multicast {ip} outside {b:?}"
                        );
                    }
                }
            }
        }
    }
    running.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn no_tenant_ever_sees_another(ops in proptest::collection::vec(tenant_op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(tenants_run(ops))?;
    }
}
