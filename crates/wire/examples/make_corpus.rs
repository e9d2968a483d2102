//! Writes the seed corpus of the `wire_decode` fuzz target: `cargo run -p outpost-wire
//! --example make_corpus -- fuzz/corpus/wire_decode`.

use bytes::{Bytes, BytesMut};
use outpost_wire::messages::*;
use outpost_wire::{Frame, FrameCodec, Message, MessageCodec};
use tokio_util::codec::Encoder;

fn stream(chunk_seed: u8, msgs: &[Message]) -> Vec<u8> {
    let mut codec = MessageCodec::new();
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m, &mut buf).expect("encodes");
    }
    let mut out = vec![chunk_seed];
    out.extend_from_slice(&buf);
    out
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/wire_decode".into());
    std::fs::create_dir_all(&dir)?;
    let ticket = Ticket::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    let peer = PeerIdentity {
        cert_sha256: Bytes::from(vec![0xAB; 32]),
        subject: "CN=device-1".into(),
        remote_addr: "127.0.0.1:40000".into(),
        channel: ChannelKind::Agent as i32,
        cert_serial: "1f2e3d4c5b6a7988".into(),
        virtual_server: String::new(),
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "handshake",
            stream(
                3,
                &[
                    Hello {
                        min_version: 1,
                        max_version: 1,
                        role: Role::Agent as i32,
                        node_id: "d1".into(),
                        software: "seed".into(),
                    }
                    .into(),
                    HelloAck {
                        version: 1,
                        role: Role::Server as i32,
                        node_id: "s".into(),
                    }
                    .into(),
                ],
            ),
        ),
        (
            "signal",
            stream(
                17,
                &[
                    SignalHello {
                        server_id: "s".into(),
                        keepalive_ms: 5000,
                        pool_size: 4,
                    }
                    .into(),
                    SignalHelloAck {
                        gateway_id: "g".into(),
                        session_id: 9,
                    }
                    .into(),
                    Keepalive {
                        seq: 1,
                        reply: false,
                    }
                    .into(),
                    ConnectRequest {
                        ticket: Some(ticket),
                        peer: Some(peer.clone()),
                        expires_in_ms: 5000,
                    }
                    .into(),
                    DataAttach {
                        ticket: Some(ticket),
                        session_id: 9,
                    }
                    .into(),
                    DataAttachAck {
                        ticket: Some(ticket),
                        peer: Some(peer.clone()),
                    }
                    .into(),
                ],
            ),
        ),
        (
            "sync",
            stream(
                63,
                &[
                    SyncRequest {
                        device_id: "d1".into(),
                        held: vec![HeldVersion {
                            kind: ObjectKind::Settings as i32,
                            id: "av".into(),
                            version: 3,
                        }],
                        on_corporate_network: true,
                        free_disk_bytes: 5 << 30,
                        uptime_secs: 100,
                        visible_peers: vec!["d2".into()],
                        dp_status: vec![],
                    }
                    .into(),
                    SyncResponse {
                        settings: vec![AppSettings {
                            application: "av".into(),
                            version: 4,
                            json: Bytes::from_static(b"{\"a\":1}"),
                        }],
                        next_sync_secs: 900,
                        assignments: vec![DpAssignment {
                            scope: Some(ScopeRef {
                                kind: ScopeKind::Group as i32,
                                id: "g1".into(),
                            }),
                            dp_device_id: "d9".into(),
                            role: DpRole::Active as i32,
                            epoch: 2,
                            multicast_group: "239.255.0.1".into(),
                            multicast_port: 15001,
                            upstream: "127.0.0.1:13000".into(),
                            signing_key: Bytes::new(),
                            unicast_addr: String::new(),
                        }],
                        ..Default::default()
                    }
                    .into(),
                ],
            ),
        ),
        (
            "chunks",
            stream(
                0,
                &[
                    ChunkRequest {
                        object_id: "u".into(),
                        offset: 0,
                        length: 16,
                    }
                    .into(),
                    ChunkResponse {
                        object_id: "u".into(),
                        offset: 0,
                        data: Bytes::from_static(b"0123456789abcdef"),
                        total_size: 16,
                    }
                    .into(),
                    UpdateAnnouncement {
                        object_id: "u".into(),
                        name: "n".into(),
                        version: 1,
                        size: 16,
                        sha256: Bytes::from(vec![1; 32]),
                    }
                    .into(),
                ],
            ),
        ),
        ("unknown_ignorable", {
            let mut buf = BytesMut::new();
            FrameCodec::new()
                .encode(
                    Frame {
                        message_type: 0x7777,
                        flags: 1,
                        payload: Bytes::from_static(b"skip me"),
                    },
                    &mut buf,
                )
                .expect("encodes");
            let mut v = vec![5];
            v.extend_from_slice(&buf);
            v.extend_from_slice(
                &stream(
                    5,
                    &[SyncNow {
                        reason: "r".into(),
                        nonce: 1,
                    }
                    .into()],
                )[1..],
            );
            v
        }),
        (
            "too_large",
            vec![1, b'O', b'P', 1, 0, 0, 0x53, 0xFF, 0xFF, 0xFF, 0xFF],
        ),
        ("bad_magic", vec![1, b'X', b'X', 1, 0, 0, 1, 0, 0, 0, 0]),
    ];
    for (name, data) in seeds {
        std::fs::write(format!("{dir}/{name}"), data)?;
    }
    // Seeds of the `wire_push` target, beside the `wire_decode` ones.
    let push_dir = std::path::Path::new(&dir).with_file_name("wire_push");
    std::fs::create_dir_all(&push_dir)?;
    let d = outpost_wire::push::PushDatagram {
        nonce: 42,
        issued_at_unix: 1_800_000_000,
        device_id: "laptop-7".into(),
        signer_cert_der: Bytes::from(vec![0x30; 300]),
        signature: Bytes::from(vec![0x5a; 71]),
    };
    let valid = d.encode().expect("encodes");
    let everyone = outpost_wire::push::PushDatagram {
        device_id: String::new(),
        ..d
    }
    .encode()
    .expect("encodes");
    let mut trailing = valid.clone();
    trailing.push(0);
    let push_seeds: [(&str, &[u8]); 5] = [
        ("valid", &valid),
        ("everyone", &everyone),
        ("truncated", &valid[..valid.len() - 10]),
        ("trailing", &trailing),
        ("bad_magic", b"OPSX\x01"),
    ];
    for (name, data) in push_seeds {
        std::fs::write(push_dir.join(name), data)?;
    }
    Ok(())
}
