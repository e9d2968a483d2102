//! The Administration Server's storage under load, on SQLite and on PostgreSQL, with 0,
//! 10,000 and 100,000 devices already enrolled. One line per case:
//!
//! - durable enrollments per second through the server's enrollment path (token checks,
//!   CSR signing, the commit of the device before the answer), 64 at once (the median of
//!   five rounds of 1,280);
//! - syncs per second (device lookup by certificate fingerprint, last-seen update, answer),
//!   and the rate the last-seen times they left are then written to the database;
//! - event rows stored per second (batches of 100, 16 agents at once, each batch durable);
//! - one administrator change (move a device, issue a token): median and 99th percentile.
//!
//! ```text
//! cargo bench --bench store
//! OUTPOST_STORE_SIZES=0,10000 cargo bench --bench store      # fewer cases
//! OUTPOST_STORE_BACKENDS=sqlite cargo bench --bench store      # one backend
//! ```
//! PostgreSQL runs in a throwaway cluster this program starts (fsync on), when its server
//! binaries are installed; without them its lines are skipped.

#[path = "../crates/server/tests/it/common/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use outpost::pki::{PkiConfig, ServerCa};
use outpost::server::{
    AdminService, DatabaseConfig, EventRecord, FixedInterval, MemoryObjects, ServiceConfig, Storage,
};
use outpost::wire::messages::{EnrollRequest, Event, Severity, SyncRequest};

const ENROLLMENTS: usize = 6_400;
const ROUNDS: usize = 5;
const CONCURRENT: usize = 64;
const SYNCS: usize = 200_000;
const EVENT_AGENTS: usize = 16;
const EVENT_BATCHES: usize = 64;
const CHANGES: usize = 200;

fn sha(i: u64) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &i.to_be_bytes());
    let mut a = [0u8; 32];
    a.copy_from_slice(d.as_ref());
    a
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

struct Line {
    enroll: f64,
    sync: f64,
    touched: f64,
    events: f64,
    mv: (f64, f64),
    token: (f64, f64),
}

fn case(rt: &tokio::runtime::Runtime, db: &DatabaseConfig, devices: u64) -> Line {
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let storage = Storage::open(db, "bench").unwrap();
    let mut reg = storage.load().unwrap().registry;
    reg.add_group("fleet", "Fleet", None).unwrap();
    reg.add_group("moved", "Moved", None).unwrap();
    // One real enrollment gives the shape of a device record; the others are copies with
    // their own fingerprints and serials.
    let token = reg
        .issue_token("fleet", None, Duration::from_secs(3600), now)
        .unwrap();
    let req = EnrollRequest {
        device_id: "template".into(),
        csr_der: csr().into(),
        enrollment_token: token,
        group_hint: String::new(),
    };
    outpost::server::enroll(&mut reg, &ca, &req, now).unwrap();
    let template = reg.device("template").unwrap().clone();
    let template_fp = template.fingerprint().unwrap();
    storage
        .commit_blocking(reg.take_journal().into_ops())
        .unwrap();
    let fill = Instant::now();
    for i in 0..devices {
        let mut d = template.clone();
        d.cert_sha256 = hex(&sha(i));
        d.cert_serial = format!("{i:040x}");
        reg.put_device(&format!("dev-{i}"), d).unwrap();
        if i % 5_000 == 4_999 {
            storage
                .commit_blocking(reg.take_journal().into_ops())
                .unwrap();
        }
    }
    storage
        .commit_blocking(reg.take_journal().into_ops())
        .unwrap();
    let fill = fill.elapsed();
    let tokens: Vec<String> = (0..ENROLLMENTS)
        .map(|i| {
            reg.issue_token(
                "fleet",
                Some(&format!("new-{i}")),
                Duration::from_secs(3600),
                now,
            )
            .unwrap()
        })
        .collect();
    storage
        .commit_blocking(reg.take_journal().into_ops())
        .unwrap();
    let requests: Vec<EnrollRequest> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| EnrollRequest {
            device_id: format!("new-{i}"),
            csr_der: csr().into(),
            enrollment_token: t,
            group_hint: String::new(),
        })
        .collect();
    let service = AdminService::new(
        ServiceConfig::new(),
        ca,
        storage.clone(),
        reg,
        Arc::new(FixedInterval(900)),
        Arc::new(MemoryObjects::default()),
    );

    // Enrollments, 64 at once, in rounds; the median round's rate.
    let per_round = ENROLLMENTS / ROUNDS;
    let mut rates: Vec<f64> = requests
        .chunks(per_round)
        .map(|round| {
            let started = Instant::now();
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for (w, chunk) in round.chunks(per_round / CONCURRENT).enumerate() {
                    let service = service.clone();
                    let chunk = chunk.to_vec();
                    set.spawn(async move {
                        for r in &chunk {
                            service
                                .enroll(r, &format!("10.0.{}.{}:40000", w / 250, w % 250))
                                .await
                                .unwrap();
                        }
                    });
                }
                while let Some(r) = set.join_next().await {
                    r.unwrap();
                }
            });
            round.len() as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let enroll = rates[rates.len() / 2];

    // Syncs, from two threads, over the devices present.
    let known = devices.max(1);
    let template_fp = &template_fp;
    // The fingerprints of the devices present, computed before the clock starts.
    let fps: Vec<[u8; 32]> = (0..devices).map(sha).collect();
    let fps = &fps;
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let service = &service;
            s.spawn(move || {
                let req = SyncRequest::default();
                for i in 0..(SYNCS as u64 / 2) {
                    let fp = if devices == 0 {
                        *template_fp
                    } else {
                        fps[((i * 2 + t) % known) as usize]
                    };
                    assert!(service.sync_known(&fp, &req).is_some());
                }
            });
        }
    });
    let sync = SYNCS as f64 / started.elapsed().as_secs_f64();
    // The last-seen times those syncs left, written in batches: timed apart.
    let started = Instant::now();
    storage.flush_touched().unwrap();
    let touched = devices.max(1) as f64 / started.elapsed().as_secs_f64();

    // Events: 16 agents, batches of 100, each batch durable before the next.
    let started = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for a in 0..EVENT_AGENTS {
            let storage = storage.clone();
            set.spawn(async move {
                for b in 0..EVENT_BATCHES {
                    let rows = (0..100u64)
                        .map(|i| {
                            EventRecord::from_agent(
                                &format!("dev-{a}"),
                                &Event {
                                    id: (b as u64) * 100 + i,
                                    time_unix_ms: 1_700_000_000_000,
                                    severity: Severity::Info as i32,
                                    kind: "app.started".into(),
                                    body: "an application started".into(),
                                },
                            )
                        })
                        .collect();
                    storage.record_events(rows).await.unwrap();
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    let events = (EVENT_AGENTS * EVENT_BATCHES * 100) as f64 / started.elapsed().as_secs_f64();

    // Administrator changes, one at a time.
    let mut moves = Vec::with_capacity(CHANGES);
    let mut issues = Vec::with_capacity(CHANGES);
    rt.block_on(async {
        for i in 0..CHANGES {
            let id = if devices == 0 {
                "template".to_string()
            } else {
                format!("dev-{}", (i as u64 * 7919) % devices)
            };
            let to = if i % 2 == 0 { "moved" } else { "fleet" };
            let t = Instant::now();
            service
                .update_registry(|r| r.move_device(&id, to))
                .await
                .unwrap();
            moves.push(t.elapsed());
            let t = Instant::now();
            service
                .update_registry(|r| {
                    r.issue_token("fleet", None, Duration::from_secs(600), SystemTime::now())
                })
                .await
                .unwrap();
            issues.push(t.elapsed());
        }
    });
    eprintln!(
        "  ({} devices written in {:.1} s)",
        devices,
        fill.as_secs_f64()
    );
    Line {
        enroll,
        sync,
        touched,
        events,
        mv: (percentile(&mut moves, 0.5), percentile(&mut moves, 0.99)),
        token: (percentile(&mut issues, 0.5), percentile(&mut issues, 0.99)),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let sizes: Vec<u64> = std::env::var("OUTPOST_STORE_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 10_000, 100_000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>13} {:>10} {:>16} {:>16}",
        "backend",
        "devices",
        "enroll/s",
        "sync/s",
        "last-seen/s",
        "events/s",
        "move ms p50/p99",
        "token ms p50/p99"
    );
    let print = |backend: &str, n: u64, l: &Line| {
        println!(
            "{:<10} {:>8} {:>10.0} {:>10.0} {:>13} {:>10.0} {:>16} {:>16}",
            backend,
            n,
            l.enroll,
            l.sync,
            if n == 0 {
                "-".to_string()
            } else {
                format!("{:.0}", l.touched)
            },
            l.events,
            format!("{:.2}/{:.2}", l.mv.0, l.mv.1),
            format!("{:.2}/{:.2}", l.token.0, l.token.1),
        );
    };
    let backends = std::env::var("OUTPOST_STORE_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .to_ascii_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let mut seq = 0..;
    for &n in sizes.iter().filter(|_| backends.contains("sqlite")) {
        let d = dir
            .path()
            .join(format!("sqlite-{n}-{}", seq.next().unwrap_or(0)));
        std::fs::create_dir(&d).unwrap();
        let l = case(&rt, &DatabaseConfig::sqlite_in(&d), n);
        print("SQLite", n, &l);
    }
    if !backends.contains("postgres") {
        return;
    }
    match postgres::Cluster::start_durable() {
        None => println!("PostgreSQL: not installed, skipped"),
        Some(cluster) => {
            for &n in &sizes {
                let url = cluster.database(&format!("bench_{n}_{}", seq.next().unwrap_or(0)));
                let l = case(&rt, &DatabaseConfig::default().with_url(url), n);
                print("PostgreSQL", n, &l);
            }
        }
    }
}
