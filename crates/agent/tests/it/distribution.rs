//! Distribution on the device side: the planner's fencing and routes (properties), and the
//! unicast block service with the resumable, verified download over loopback TCP.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use outpost_agent::AgentError;
use outpost_agent::distribution::chunks::{self, ChunkService};
use outpost_agent::distribution::{Planner, Route};
use outpost_wire::messages::{DpAssignment, DpRole, ScopeKind, ScopeRef, UpdateAnnouncement};
use proptest::prelude::*;

fn assignment(dp: &str, scope: &str, role: DpRole, epoch: u64) -> DpAssignment {
    DpAssignment {
        scope: Some(ScopeRef {
            kind: ScopeKind::Group as i32,
            id: scope.into(),
        }),
        dp_device_id: dp.into(),
        role: role as i32,
        epoch,
        multicast_group: "239.255.0.9".into(),
        multicast_port: 15001,
        upstream: if role == DpRole::Standby {
            "other".into()
        } else {
            "server".into()
        },
        signing_key: Bytes::from(vec![1u8; 32]),
        unicast_addr: "127.0.0.1:15002".into(),
    }
}

proptest! {
    /// Whatever order role messages arrive in, this DP serves a scope only when the newest
    /// epoch it has seen for that scope made it active, and serves it at that epoch.
    #[test]
    fn a_dp_serves_only_at_the_newest_epoch_it_has_seen(
        msgs in prop::collection::vec((0usize..2, 0u64..6, 0usize..3), 1..40)
    ) {
        let scopes = ["a", "b"];
        let roles = [DpRole::Active, DpRole::Standby, DpRole::None];
        let mut p = Planner::new("dp-1", true);
        let mut newest: BTreeMap<&str, (u64, DpRole)> = BTreeMap::new();
        for (s, epoch, r) in msgs {
            let scope = scopes[s];
            let plan = p.plan(&[assignment("dp-1", scope, roles[r], epoch)], Vec::new());
            let e = newest.entry(scope).or_insert((epoch, roles[r]));
            if epoch >= e.0 {
                *e = (epoch, roles[r]);
            } else {
                prop_assert_eq!(plan.stale, 1);
            }
            let (top, role) = newest[scope];
            let served = plan.serve.as_ref().and_then(|s| {
                s.scopes.get(&(ScopeKind::Group as i32, scope.to_string())).copied()
            });
            if role == DpRole::Active && epoch >= top {
                prop_assert_eq!(served, Some(top));
                prop_assert_eq!(&plan.route, &Route::Server);
            } else {
                prop_assert_eq!(served, None);
            }
        }
    }
}

#[test]
fn routes_follow_the_role() {
    // A standby fetches from the active DP's block service.
    let mut standby = Planner::new("dp-2", true);
    let plan = standby.plan(
        &[
            DpAssignment {
                upstream: "dp-1".into(),
                ..assignment("dp-2", "a", DpRole::Standby, 3)
            },
            assignment("dp-1", "a", DpRole::Active, 3),
        ],
        Vec::new(),
    );
    assert_eq!(
        plan.route,
        Route::ActiveDp {
            dp: "dp-1".into(),
            addr: "127.0.0.1:15002".into()
        }
    );
    // A device that may not serve ignores a DP role and receives from its DP.
    let mut device = Planner::new("dp-2", false);
    let plan = device.plan(
        &[
            assignment("dp-2", "a", DpRole::Active, 3),
            assignment("dp-1", "a", DpRole::Active, 3),
        ],
        Vec::new(),
    );
    assert!(plan.serve.is_none());
    assert!(matches!(plan.route, Route::Multicast(s) if s.dp == "dp-1"));
    // No key from the DP yet, or no DP at all: the server.
    let mut d = Planner::new("pc", false);
    let no_key = DpAssignment {
        signing_key: Bytes::new(),
        ..assignment("dp-1", "a", DpRole::Active, 3)
    };
    assert_eq!(d.plan(&[no_key], Vec::new()).route, Route::Server);
    assert_eq!(d.plan(&[], Vec::new()).route, Route::Server);
}

fn announcement(id: &str, data: &[u8]) -> UpdateAnnouncement {
    UpdateAnnouncement {
        object_id: id.into(),
        name: id.into(),
        version: 1,
        size: data.len() as u64,
        sha256: Bytes::copy_from_slice(&outpost_multicast::manifest::sha256(data)),
    }
}

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_block_service_serves_complete_updates_and_downloads_resume_and_verify() {
    let served = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(3 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(served.path().join("pkg-1"), &data).unwrap();
    // A partial file is never served, whatever it is asked as.
    std::fs::write(
        served.path().join("pkg-2.0011223344556677.part"),
        b"partial",
    )
    .unwrap();
    let svc = ChunkService::start(
        "127.0.0.1:0".parse().unwrap(),
        served.path().to_path_buf(),
        "dp-1".into(),
    )
    .await
    .unwrap();
    let addr = svc.local_addr().to_string();

    // A download that stopped midway resumes from what it wrote, and checks the whole file.
    let out = tempfile::tempdir().unwrap();
    let ann = announcement("pkg-1", &data);
    let partial = out.path().join(format!(
        "pkg-1.{}.download",
        outpost_multicast::manifest::hex(&ann.sha256[..8])
    ));
    std::fs::write(&partial, &data[..(1 << 20) + 100]).unwrap();
    let mut conn = chunks::dial_dp(&addr, "pc-1", T).await.unwrap();
    let mut first = None;
    let path = chunks::download(&mut conn, &ann, out.path(), 1 << 20, T, |n| {
        first.get_or_insert(n);
    })
    .await
    .unwrap();
    assert_eq!(first, Some(1 << 20), "resumed at the last whole chunk");
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(!partial.exists());
    assert!(chunks::holds(out.path(), &ann).await);
    assert_eq!(svc.bytes_served(), data.len() as u64 - (1 << 20));

    // An announcement whose hash does not match what is served: nothing is kept.
    let mut wrong = announcement("pkg-1", &data);
    wrong.sha256 = Bytes::from(vec![0u8; 32]);
    let other = tempfile::tempdir().unwrap();
    let e = chunks::download(&mut conn, &wrong, other.path(), 1 << 20, T, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::Corrupt { .. }), "{e}");
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);

    // Missing updates and partial files are refused by name; ids that are paths are refused
    // before any file is touched.
    let e = chunks::fetch_range(&mut conn, "pkg-9", 0, 10, 1 << 20, T)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("NotFound"), "{e}");
    let e = chunks::fetch_range(&mut conn, "pkg-2.0011223344556677.part", 0, 7, 1 << 20, T)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not an update id"), "{e}");
    let mut conn = chunks::dial_dp(&addr, "pc-1", T).await.unwrap();
    let e = chunks::fetch_range(&mut conn, "../etc", 0, 7, 1 << 20, T)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not an update id"), "{e}");
    let bad = UpdateAnnouncement {
        object_id: "../x".into(),
        ..announcement("x", b"x")
    };
    assert!(chunks::check_announcement(&bad).is_err());
}

/// A peer that asks for chunks and never reads the answers loses its connection once it
/// has taken nothing for the idle limit, so it cannot hold a connection slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_loses_its_block_service_connection() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::messages::ChunkRequest;
    use outpost_wire::{Message, MessageCodec};

    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("pkg-1"), vec![7u8; 1 << 20]).unwrap();
    let svc = ChunkService::start_with_idle(
        "127.0.0.1:0".parse().unwrap(),
        served.path().to_path_buf(),
        "dp-1".into(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(svc.local_addr()).await.unwrap();
    let mut conn = tokio_util::codec::Framed::new(
        stream,
        MessageCodec::with_max_frame_len(chunks::MAX_CHUNK_FRAME),
    );
    chunks::hello(&mut conn, "pc-1", T).await.unwrap();
    const ASKED: usize = 64;
    for _ in 0..ASKED {
        let req = ChunkRequest {
            object_id: "pkg-1".into(),
            offset: 0,
            length: chunks::MAX_CHUNK,
        };
        conn.send(Message::from(req)).await.unwrap();
    }
    // Read nothing for three idle limits, then take what comes until the end.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut answers = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Ok(Some(Ok(Message::ChunkResponse(_)))) => answers += 1,
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(_)) | None) => break,
            Err(_) => panic!("the connection was still open after 30 s"),
        }
    }
    // What the socket buffers held when the service gave up came through; not the rest.
    assert!(
        answers < ASKED / 2,
        "{answers} of {ASKED} answers: the service waited for the reader"
    );
}
