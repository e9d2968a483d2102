//! One test suite for both storage backends: every case runs on SQLite and on a PostgreSQL
//! cluster this test starts itself (skipped, with a message, where PostgreSQL is not
//! installed, unless `OUTPOST_REQUIRE_POSTGRES=1`).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use outpost_server::{
    Backend, DatabaseConfig, EventRecord, Op, PolicyObjectKind, Registry, SCHEMA_VERSION,
    SecurityIssue, ServerError, Storage, StorageError, UpdateObject,
};
use outpost_wire::messages::Severity;

/// Makes a fresh, empty database per call.
type Fresh<'a> = &'a dyn Fn(&str) -> DatabaseConfig;

fn registry(id: &str) -> Registry {
    let now = SystemTime::now();
    let mut r = Registry::new(id).unwrap();
    r.add_group("eu", "Europe", None).unwrap();
    r.add_group("paris", "Paris", Some("eu")).unwrap();
    r.issue_token("paris", Some("pc-9"), Duration::from_secs(600), now)
        .unwrap();
    r.issue_token("eu", None, Duration::from_secs(600), now)
        .unwrap();
    r.register_dmz_gateway(
        "dmz-1",
        "127.0.0.1:13000".parse::<SocketAddr>().unwrap(),
        vec!["gw.example.test".into(), "gw2.example.test".into()],
    )
    .unwrap();
    r
}

/// A device record as enrollment makes it.
fn enroll(r: &mut Registry, id: &str, group: &str) {
    let token = r
        .issue_token(group, Some(id), Duration::from_secs(600), SystemTime::now())
        .unwrap();
    let ca = outpost_pki::ServerCa::create(outpost_pki::PkiConfig::default(), SystemTime::now())
        .unwrap();
    let req = common::enroll_request(id, &token);
    outpost_server::enroll(r, &ca, &req, SystemTime::now()).unwrap();
}

fn commit(storage: &Storage, r: &mut Registry) {
    storage
        .commit_blocking(r.take_journal().into_ops())
        .unwrap();
}

/// Everything written comes back after the database is opened again.
fn round_trip(fresh: Fresh<'_>) {
    let db = fresh("roundtrip");
    let storage = Storage::open(&db, "server-1").unwrap();
    let mut r = storage.load().unwrap().registry;
    assert_eq!(r.groups().len(), 1, "a new database has the root group");
    r.add_group("eu", "Europe", None).unwrap();
    r.add_group("paris", "Paris", Some("eu")).unwrap();
    r.issue_token(
        "paris",
        Some("pc-9"),
        Duration::from_secs(600),
        SystemTime::now(),
    )
    .unwrap();
    enroll(&mut r, "pc-1", "paris");
    enroll(&mut r, "pc-2", "eu");
    r.register_dmz_gateway(
        "dmz-1",
        "[::1]:13000".parse().unwrap(),
        vec!["gw.example.test".into(), "gw2.example.test".into()],
    )
    .unwrap();
    r.register_remote_office_gateway("ro-1", "pc-2", &[7; 32])
        .unwrap();
    r.register_dp("pc-1", "paris").unwrap();
    r.register_dp_scope(
        "pc-1",
        &outpost_server::DpScope::NetworkLocation("lab".into()),
    )
    .unwrap();
    r.register_dp("pc-1", "eu").unwrap();
    r.register_dp_scope("pc-1", &outpost_server::DpScope::OwnBroadcastDomain)
        .unwrap();
    r.set_network_location("pc-2", Some("lab")).unwrap();
    let reserve = outpost_server::ReserveCertificate::new(&[5; 32], "0a", 1_800_000_000);
    r.set_reserve_certificate("pc-2", reserve.clone()).unwrap();
    r.move_device("pc-2", "paris").unwrap();
    r.move_group("paris", "root").unwrap();
    r.set_tags("pc-1", ["kiosk".to_string(), "floor-2".to_string()].into())
        .unwrap();
    commit(&storage, &mut r);
    assert!(r.device("pc-1").unwrap().cert_expires_unix > 0);
    let now = SystemTime::now();
    let update = UpdateObject::new("agent", "Agent 2", 2, 10, "ab".repeat(32), 1_700_000_000);
    let issue = SecurityIssue::new("pc-1", "dp.low_disk", Severity::Warning as i32, "low", now);
    let mut book = outpost_server::AccountBook::default();
    let account = book
        .bootstrap("admin", "correct horse battery", now)
        .unwrap();
    book.apply(&account);
    let (_, token) = book.issue_api_token("admin", "ci", now).unwrap();
    book.apply(&token);
    let revoked = match &token {
        Op::PutApiToken(t) => book.revoke_api_token(&t.id, now).unwrap(),
        other => panic!("{other:?}"),
    };
    storage
        .commit_blocking(vec![
            Op::PutEpoch {
                scope: "paris".into(),
                epoch: 7,
            },
            Op::PutEpoch {
                scope: "paris".into(),
                epoch: 3,
            },
            Op::PutPolicyObject {
                kind: PolicyObjectKind::Policy,
                id: "p1".into(),
                document: r#"{"id":"p1"}"#.into(),
            },
            Op::PutUpdateObject(update.clone()),
            Op::PutSecurityIssue(issue.clone()),
            Op::PutMeta {
                key: "k".into(),
                value: "v".into(),
            },
            account.clone(),
            token,
            revoked.clone(),
            Op::AcknowledgeSecurityIssue {
                device: "pc-1".into(),
                kind: "dp.low_disk".into(),
                by: "admin".into(),
                at_unix: 1_700_000_300,
            },
        ])
        .unwrap();
    drop(storage);

    let storage = Storage::open(&db, "server-1").unwrap();
    let snap = storage.load().unwrap();
    assert_eq!(
        snap.registry, r,
        "groups, devices, tokens, gateways and DPs round-trip"
    );
    assert_eq!(
        snap.registry.dps()["pc-1"],
        ["paris", "location~lab", "eu", "broadcast-domain~own"],
        "DP scopes of every kind keep their order"
    );
    let pc2 = snap.registry.device("pc-2").unwrap();
    assert_eq!(pc2.network_location.as_deref(), Some("lab"));
    assert_eq!(pc2.reserve_cert.as_ref(), Some(&reserve));
    assert_eq!(
        snap.registry
            .device_by_fingerprint(&[5; 32])
            .map(|(id, _)| id),
        Some("pc-2"),
        "the reserve's fingerprint is indexed too"
    );
    // The fingerprint index is rebuilt from the rows.
    let fp = snap.registry.device("pc-1").unwrap().fingerprint().unwrap();
    assert_eq!(snap.registry.device_by_fingerprint(&fp).unwrap().0, "pc-1");
    assert_eq!(
        snap.epochs.get("paris"),
        Some(&7),
        "an epoch never goes down"
    );
    assert_eq!(
        snap.policy.get(&(PolicyObjectKind::Policy, "p1".into())),
        Some(&r#"{"id":"p1"}"#.to_string())
    );
    assert_eq!(snap.updates, vec![update]);
    let mut acknowledged = issue;
    acknowledged.acknowledged_at_unix = Some(1_700_000_300);
    acknowledged.acknowledged_by = Some("admin".into());
    assert_eq!(snap.issues, vec![acknowledged]);
    assert_eq!(snap.meta.get("k").map(String::as_str), Some("v"));
    assert!(matches!(&account, Op::PutAccount(a) if snap.accounts == [a.clone()]));
    assert!(matches!(&revoked, Op::PutApiToken(t) if snap.api_tokens == [t.clone()]));
    let book = outpost_server::AccountBook::new(snap.accounts.clone(), snap.api_tokens.clone());
    assert_eq!(
        book.check_password("admin", "correct horse battery"),
        Some(outpost_server::Role::Administrator),
        "the stored hash checks"
    );
    let counts = storage.counts().unwrap();
    assert_eq!((counts.devices, counts.tokens), (2, 1));

    // Removal.
    storage
        .commit_blocking(vec![
            Op::DeleteSecurityIssue {
                device: "pc-1".into(),
                kind: "dp.low_disk".into(),
            },
            Op::DeleteDevice { id: "pc-1".into() },
            Op::DeleteGateway { id: "ro-1".into() },
            Op::DeletePolicyObject {
                kind: PolicyObjectKind::Policy,
                id: "p1".into(),
            },
        ])
        .unwrap();
    let snap = storage.load().unwrap();
    assert!(snap.registry.device("pc-1").is_none());
    assert!(snap.registry.dps().is_empty(), "its DP scopes went with it");
    assert!(snap.issues.is_empty() && snap.policy.is_empty());
    assert_eq!(snap.registry.gateways().len(), 1);
}

/// A database at the previous schema version is brought up to date, keeping its rows; a
/// build that knows only the older schema refuses the newer database.
fn upgrade_from_the_previous_version(fresh: Fresh<'_>) {
    let db = fresh("upgrade");
    let storage = Storage::open_at_version(&db, "server-1", SCHEMA_VERSION - 1).unwrap();
    // Rows as that schema has them, written as a build of that version wrote them.
    for sql in [
        "INSERT INTO admin_groups (server_id, id, name, parent) \
         VALUES ('server-1', 'paris', 'Paris', 'root')",
        "INSERT INTO devices (server_id, id, group_id, cert_sha256, cert_serial, enrolled_at, \
         last_seen, enrolled_with) VALUES ('server-1', 'pc-1', 'paris', 'ab', '01', 1700000000, \
         1700000100, 'cd')",
        "INSERT INTO security_issues (server_id, device_id, kind, severity, opened_at, body) \
         VALUES ('server-1', 'pc-1', 'dp.low_disk', 2, 1700000200, 'low')",
        "INSERT INTO gateways (server_id, id, kind, device_id) \
         VALUES ('server-1', 'office-1', 'remote_office', 'pc-1')",
    ] {
        storage.execute_unchecked(sql).unwrap();
    }
    drop(storage);

    let storage = Storage::open(&db, "server-1").unwrap();
    let snap = storage.load().unwrap();
    let d = snap.registry.device("pc-1").expect("rows kept");
    assert_eq!(
        (
            d.group.as_str(),
            d.enrolled_at_unix,
            d.last_seen_unix,
            d.enrolled_with.as_str()
        ),
        ("paris", 1_700_000_000, 1_700_000_100, "cd")
    );
    assert!(
        d.tags.is_empty() && d.cert_expires_unix == 0,
        "new columns empty"
    );
    assert_eq!(snap.issues.len(), 1);
    assert_eq!(snap.issues[0].acknowledged_at_unix, None);
    assert_eq!(
        snap.registry.gateways().get("office-1"),
        Some(&outpost_server::GatewayRegistration::RemoteOffice {
            device_id: "pc-1".into(),
            certificate_sha256: String::new(),
        }),
        "a registration from before the binding loads unbound (its tunnels are refused)"
    );
    storage
        .record_events_blocking(vec![EventRecord::server(
            None,
            Severity::Info,
            "test",
            "after the upgrade",
        )])
        .unwrap();
    assert_eq!(storage.counts().unwrap().events, 1, "the new tables work");
    // Opening it again applies nothing and checks what was applied.
    drop(storage);
    let storage = Storage::open(&db, "server-1").unwrap();
    assert_eq!(storage.counts().unwrap().devices, 1);
    drop(storage);

    let e = Storage::open_at_version(&db, "server-1", SCHEMA_VERSION - 1).unwrap_err();
    assert!(
        matches!(e, ServerError::Storage(StorageError::Migrate { .. })),
        "an older schema refuses a newer database: {e}"
    );
}

/// Commits queued together become one group; a bad write in the group fails only its own
/// caller.
fn grouped_commits_and_a_bad_write(fresh: Fresh<'_>) {
    let db = fresh("groups");
    let storage = Storage::open(&db, "server-1").unwrap();
    let mut r = storage.load().unwrap().registry;
    r.add_group("lab", "Lab", None).unwrap();
    commit(&storage, &mut r);
    let mut tickets = Vec::new();
    for i in 0..64 {
        r.issue_token(
            "lab",
            Some(&format!("pc-{i}")),
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .unwrap();
        let ops = r.take_journal().into_ops();
        tickets.push(storage.queue(ops));
        if i == 30 {
            // A token in a group the database does not have: refused at commit.
            tickets.push(storage.queue(vec![Op::PutToken {
                key: "00".repeat(32),
                token: registry_token("no-such-group"),
            }]));
        }
    }
    let results: Vec<Result<(), ServerError>> = tickets.into_iter().map(|t| t.wait()).collect();
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, vec![31], "only the bad write failed: {results:?}");
    assert_eq!(storage.counts().unwrap().tokens, 64);
}

fn registry_token(group: &str) -> outpost_server::TokenRecord {
    // A token record is made by issuing one; take it from a scratch registry.
    let mut r = Registry::new("scratch").unwrap();
    r.add_group(group, group, None).unwrap();
    r.issue_token(group, None, Duration::from_secs(60), SystemTime::now())
        .unwrap();
    r.tokens().values().next().unwrap().clone()
}

/// SQL that makes inserts into `table` fail (as a full or broken database would), and the
/// SQL that undoes it.
fn refuse_inserts(backend: Backend, table: &str) -> (Vec<String>, Vec<String>) {
    match backend {
        Backend::Sqlite => (
            vec![format!(
                "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'database full (test)'); END"
            )],
            vec![format!("DROP TRIGGER refuse_{table}")],
        ),
        _ => (
            vec![
                format!(
                    "CREATE FUNCTION refuse_{table}() RETURNS trigger AS $$ BEGIN \
                     RAISE EXCEPTION 'database full (test)'; END $$ LANGUAGE plpgsql"
                ),
                format!(
                    "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
                ),
            ],
            vec![
                format!("DROP TRIGGER refuse_{table} ON {table}"),
                format!("DROP FUNCTION refuse_{table}()"),
            ],
        ),
    }
}

/// A device service over `storage` and `reg`, answering syncs with a fixed interval.
fn service_over(storage: &Storage, reg: Registry) -> std::sync::Arc<outpost_server::AdminService> {
    use std::sync::Arc;
    let ca = outpost_pki::ServerCa::create(outpost_pki::PkiConfig::default(), SystemTime::now())
        .unwrap();
    outpost_server::AdminService::new(
        outpost_server::ServiceConfig::new(),
        Arc::new(ca),
        storage.clone(),
        reg,
        Arc::new(outpost_server::FixedInterval(60)),
        Arc::new(outpost_server::MemoryObjects::default()),
    )
}

/// A change the database refuses is not kept in memory either, and a later one goes
/// through.
fn a_refused_commit_changes_nothing(fresh: Fresh<'_>) {
    let db = fresh("refused");
    let storage = Storage::open(&db, "server-1").unwrap();
    let reg = storage.load().unwrap().registry;
    let service = service_over(&storage, reg);
    let (on, off) = refuse_inserts(storage.backend(), "admin_groups");
    for sql in on {
        storage.execute_unchecked(&sql).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let add = |reg: &mut Registry| {
        reg.add_group("eu", "Europe", None)?;
        reg.add_group("paris", "Paris", Some("eu"))
    };
    let e = rt.block_on(service.update_registry(add)).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("database full (test)"), "{e}");
    assert!(
        !service.with_registry(|r| r.groups().contains_key("eu")),
        "not kept in memory"
    );
    for sql in off {
        storage.execute_unchecked(&sql).unwrap();
    }
    rt.block_on(service.update_registry(add)).unwrap();
    assert!(service.with_registry(|r| r.groups().contains_key("paris")));
    let stored = Storage::open(&db, "server-1")
        .unwrap()
        .load()
        .unwrap()
        .registry;
    assert!(stored.groups().contains_key("paris"), "committed");
    // A change that fails in memory commits nothing.
    let e = rt
        .block_on(service.update_registry(|reg| {
            reg.add_group("lyon", "Lyon", Some("eu"))?;
            reg.add_group("lyon", "Lyon again", None)
        }))
        .unwrap_err();
    assert!(matches!(e, ServerError::Duplicate { .. }), "{e}");
    assert!(!service.with_registry(|r| r.groups().contains_key("lyon")));
    let stored = Storage::open(&db, "server-1")
        .unwrap()
        .load()
        .unwrap()
        .registry;
    assert!(!stored.groups().contains_key("lyon"));
}

/// Events are kept up to the count limit (the newest), and dropped past their age.
fn event_retention(fresh: Fresh<'_>) {
    let db = fresh("events").with_max_events(100);
    let storage = Storage::open(&db, "server-1").unwrap();
    let agent_event = |i: u64| outpost_wire::messages::Event {
        id: i,
        time_unix_ms: 1_700_000_000_000 + i as i64,
        severity: Severity::Info as i32,
        kind: "test".into(),
        body: format!("event {i}"),
    };
    for chunk in (1..=1000u64).collect::<Vec<_>>().chunks(250) {
        let rows = chunk
            .iter()
            .map(|&i| EventRecord::from_agent("pc-1", &agent_event(i)))
            .collect();
        storage.record_events_blocking(rows).unwrap();
    }
    let counts = storage.counts().unwrap();
    assert!(counts.events <= 100, "{} events kept", counts.events);
    let kept = storage.events_after(0, 1000).unwrap();
    assert_eq!(kept.len() as u64, counts.events);
    assert_eq!(
        kept.last().unwrap().event.device_seq,
        Some(1000),
        "the newest is kept"
    );
    assert!(kept.first().unwrap().event.device_seq.unwrap() > 900);
    assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq));
    // Filters by kind and device.
    storage
        .record_events_blocking(vec![EventRecord::server(
            Some("pc-2"),
            Severity::Warning,
            "other",
            "x",
        )])
        .unwrap();
    let q = outpost_server::EventQuery::after(0, 1000);
    assert_eq!(
        storage.events(&q.clone().with_kind("other")).unwrap().len(),
        1
    );
    assert_eq!(
        storage
            .events(&q.clone().with_device("pc-2"))
            .unwrap()
            .len(),
        1
    );
    let both = storage
        .events(&q.clone().with_device("pc-1").with_kind("test"))
        .unwrap();
    assert!(!both.is_empty());
    assert!(
        both.iter()
            .all(|e| e.event.kind == "test" && e.event.device.as_deref() == Some("pc-1"))
    );
    assert!(storage.events(&q.with_kind("none")).unwrap().is_empty());
    let counts = storage.counts().unwrap();
    // Nothing is old enough yet; 181 days on, everything is.
    assert_eq!(storage.trim_events(SystemTime::now()).unwrap(), 0);
    let later = SystemTime::now() + Duration::from_secs(181 * 86_400);
    assert_eq!(storage.trim_events(later).unwrap(), counts.events);
    assert_eq!(storage.counts().unwrap().events, 0);
}

/// Last-seen times are written in batches, within about a second.
fn last_seen_is_written(fresh: Fresh<'_>) {
    let db = fresh("touch");
    let storage = Storage::open(&db, "server-1").unwrap();
    let mut r = storage.load().unwrap().registry;
    r.add_group("lab", "Lab", None).unwrap();
    enroll(&mut r, "pc-1", "lab");
    commit(&storage, &mut r);
    storage.touch(vec![("pc-1".into(), 1_800_000_000, Some(5 << 30))]);
    let mut seen = 0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let d = storage
            .load()
            .unwrap()
            .registry
            .device("pc-1")
            .cloned()
            .unwrap();
        if d.last_seen_unix != 0 {
            seen = d.last_seen_unix;
            assert_eq!(d.free_disk_bytes, Some(5 << 30));
            break;
        }
    }
    assert_eq!(seen, 1_800_000_000);
}

/// An import goes into an empty database only; a database of another instance is refused.
fn imports_and_instances(fresh: Fresh<'_>) {
    let db = fresh("import");
    let mut r = registry("server-1");
    enroll(&mut r, "pc-1", "paris");
    let storage = Storage::create(&db, &r).unwrap();
    assert_eq!(storage.load().unwrap().registry, r);
    let e = storage.import_registry(&r).unwrap_err();
    assert!(e.to_string().contains("already holds 1 device(s)"), "{e}");
    drop(storage);
    let e = Storage::open(&db, "server-2").unwrap_err();
    assert!(
        e.to_string()
            .contains("belongs to server instance \"server-1\""),
        "{e}"
    );
}

/// While the database refuses writes, enrollments are refused with a code the agent
/// retries (and no failure is counted against its address) and enrolled devices' syncs are
/// answered from memory; afterwards the same request enrolls.
fn a_failing_database_refuses_enrollments_retryably_and_syncs_go_on(fresh: Fresh<'_>) {
    let db = fresh("failing");
    let storage = Storage::open(&db, "server-1").unwrap();
    let mut reg = storage.load().unwrap().registry;
    reg.add_group("lab", "Lab", None).unwrap();
    enroll(&mut reg, "pc-1", "lab");
    let token = reg
        .issue_token(
            "lab",
            Some("pc-2"),
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap();
    commit(&storage, &mut reg);
    let fp = reg.device("pc-1").unwrap().fingerprint().unwrap();
    let service = service_over(&storage, reg);
    let req = common::enroll_request("pc-2", &token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (on, off) = refuse_inserts(storage.backend(), "devices");
    for sql in on {
        storage.execute_unchecked(&sql).unwrap();
    }
    for _ in 0..12 {
        // Each attempt is refused alike, with the code an agent retries on.
        let e = rt
            .block_on(service.enroll(&req, "192.0.2.7:40000"))
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(
            outpost_server::refusal_code(&e),
            outpost_wire::messages::RefusalCode::Overloaded
        );
        assert!(e.to_string().contains("database full (test)"), "{e}");
    }
    assert!(service.with_registry(|r| r.device("pc-2").is_none()));
    let answer = service.sync_known(&fp, &outpost_wire::messages::SyncRequest::default());
    assert_eq!(answer.map(|a| a.next_sync_secs), Some(60), "syncs go on");
    for sql in off {
        storage.execute_unchecked(&sql).unwrap();
    }
    let resp = rt
        .block_on(service.enroll(&req, "192.0.2.7:40000"))
        .unwrap();
    assert_eq!(resp.group, "lab");
    let stored = Storage::open(&db, "server-1")
        .unwrap()
        .load()
        .unwrap()
        .registry;
    assert!(stored.device("pc-2").is_some());
    // A refusal that is the request's fault is an event of the server's own.
    let bad = common::enroll_request("pc-3", "not a token");
    rt.block_on(service.enroll(&bad, "192.0.2.8:40000"))
        .unwrap_err();
    storage.commit_blocking(Vec::new()).unwrap();
    let events = storage.events_after(0, 10).unwrap();
    let refused = events
        .iter()
        .find(|e| e.event.kind == "enrollment.refused")
        .expect("an event");
    assert!(refused.event.body.contains("192.0.2.8"), "{refused:?}");
    assert_eq!(refused.event.device, None);
}

/// Published update objects survive a restart; content that no longer matches its hash is
/// never served.
fn update_objects(fresh: Fresh<'_>) {
    use outpost_server::{ObjectStore, StoredObjects};
    let db = fresh("objects");
    let files = tempfile::tempdir().unwrap();
    let storage = Storage::open(&db, "server-1").unwrap();
    let objects = StoredObjects::open(files.path(), storage.clone(), &[]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let a = rt
        .block_on(objects.publish("agent", "Agent 2", 2, &data))
        .unwrap();
    assert_eq!(a.size, 100_000);
    drop(objects);

    let stored = storage.load().unwrap().updates;
    assert_eq!(stored.len(), 1);
    assert_eq!(outpost_server::announcement(&stored[0]), a);
    let objects = StoredObjects::open(files.path(), storage.clone(), &stored).unwrap();
    let (chunk, total) = objects.read("agent", 99_990, 64).unwrap();
    assert_eq!((&chunk[..], total), (&data[99_990..], 100_000));
    assert!(objects.read("other", 0, 1).is_none());

    // The file changed behind the server's back: after a restart it is not served.
    let path = files
        .path()
        .join(&stored[0].sha256[..2])
        .join(&stored[0].sha256);
    let mut changed = std::fs::read(&path).unwrap();
    changed[5] ^= 1;
    std::fs::write(&path, changed).unwrap();
    let objects = StoredObjects::open(files.path(), storage, &stored).unwrap();
    assert!(objects.read("agent", 0, 64).is_none());
}

/// Blocking commits from inside a tokio task, more of them in one poll than tokio's
/// cooperative budget allows (128): each still completes (a budgeted wait would spin on
/// "not ready" for ever once the budget is spent). Checked on a thread of its own, waited
/// for at most a minute, so a regression fails instead of hanging.
fn blocking_commits_inside_a_task_past_its_budget(fresh: Fresh<'_>) {
    let storage = Storage::open(&fresh("budget"), "server-1").unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let s = storage.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n = rt.block_on(async move {
            let mut n = 0;
            for i in 0..300u64 {
                s.commit_blocking(vec![Op::PutMeta {
                    key: format!("k{i}"),
                    value: "v".into(),
                }])
                .unwrap();
                n += 1;
            }
            n
        });
        let _ = done.send(n);
    });
    let n = finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("blocking commits inside a task never finished");
    assert_eq!(n, 300);
    assert_eq!(storage.load().unwrap().meta.len(), 300);
}

fn suite(fresh: Fresh<'_>) {
    blocking_commits_inside_a_task_past_its_budget(fresh);
    update_objects(fresh);
    a_failing_database_refuses_enrollments_retryably_and_syncs_go_on(fresh);
    round_trip(fresh);
    upgrade_from_the_previous_version(fresh);
    grouped_commits_and_a_bad_write(fresh);
    a_refused_commit_changes_nothing(fresh);
    event_retention(fresh);
    last_seen_is_written(fresh);
    imports_and_instances(fresh);
}

#[test]
fn the_storage_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        DatabaseConfig::sqlite_in(&d)
    };
    suite(&fresh);
}

#[test]
fn the_storage_suite_on_postgresql() {
    let Some(cluster) = common::postgres::Cluster::start() else {
        return;
    };
    let fresh = |name: &str| DatabaseConfig::default().with_url(cluster.database(name));
    suite(&fresh);
}

/// PostgreSQL going away fails commits with a clear, retryable error; once it is back the
/// storage reconnects by itself and nothing acknowledged was lost.
#[test]
fn a_postgresql_restart_is_survived() {
    let Some(cluster) = common::postgres::Cluster::start() else {
        return;
    };
    let db = DatabaseConfig::default().with_url(cluster.database("restart"));
    let storage = Storage::open(&db, "server-1").unwrap();
    let mut r = storage.load().unwrap().registry;
    r.add_group("eu", "Europe", None).unwrap();
    commit(&storage, &mut r);
    cluster.kill();
    r.add_group("us", "Americas", None).unwrap();
    let e = storage
        .commit_blocking(r.take_journal().into_ops())
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("PostgreSQL"), "{e}");
    cluster.restart();
    r.add_group("asia", "Asia", None).unwrap();
    commit(&storage, &mut r);
    let stored = storage.load().unwrap().registry;
    assert!(stored.groups().contains_key("eu") && stored.groups().contains_key("asia"));
    assert!(
        !stored.groups().contains_key("us"),
        "the failed commit left nothing"
    );
}

#[test]
fn a_relative_data_directory_gives_an_absolute_sqlite_path() {
    let db = DatabaseConfig::default().resolve(std::path::Path::new("some/../state"));
    let file = db.sqlite_file().unwrap();
    assert!(file.is_absolute(), "{file:?}");
    assert!(file.ends_with("state/outpost.db"), "{file:?}");
    let pg = DatabaseConfig::default().with_url("postgres://u:secret@db.example.test/outpost");
    assert_eq!(
        pg.resolve(std::path::Path::new("x")),
        pg,
        "a PostgreSQL URL is kept"
    );
    assert!(
        !pg.redacted_url().contains("secret"),
        "{}",
        pg.redacted_url()
    );
}
