//! Property tests: every message round-trips; any split of a valid stream decodes to the same
//! messages; arbitrary bytes never panic.

use bytes::{Bytes, BytesMut};
use outpost_wire::messages::*;
use outpost_wire::{Frame, FrameCodec, Message, MessageCodec, MessageType, WireError};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn s() -> impl Strategy<Value = String> {
    ".{0,12}"
}
fn b(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}
fn digest() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 32).prop_map(Bytes::from)
}
fn e() -> impl Strategy<Value = i32> {
    // Known values and values from a newer peer's enum alike.
    prop_oneof![0i32..12, any::<i32>()]
}
fn ticket() -> impl Strategy<Value = Ticket> {
    any::<u128>().prop_map(Ticket::from_u128)
}
fn peer() -> impl Strategy<Value = PeerIdentity> {
    (
        prop_oneof![Just(Bytes::new()), digest()],
        s(),
        s(),
        e(),
        "[0-9a-f]{0,40}",
        "[a-z0-9-]{0,64}",
    )
        .prop_map(|(c, subject, a, ch, serial, vs)| PeerIdentity {
            cert_sha256: c,
            subject,
            remote_addr: a,
            channel: ch,
            cert_serial: serial,
            virtual_server: vs,
        })
}
fn scope() -> impl Strategy<Value = ScopeRef> {
    (e(), s()).prop_map(|(kind, id)| ScopeRef { kind, id })
}
fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        vec(any::<u8>(), 32).prop_map(Bytes::from)
    ]
}
fn assignment() -> impl Strategy<Value = DpAssignment> {
    (
        scope(),
        s(),
        e(),
        any::<u64>(),
        s(),
        any::<u32>(),
        s(),
        (key(), s()),
    )
        .prop_map(|(sc, dp, role, epoch, g, port, up, (k, ua))| DpAssignment {
            scope: Some(sc),
            dp_device_id: dp,
            role,
            epoch,
            multicast_group: g,
            multicast_port: port,
            upstream: up,
            signing_key: k,
            unicast_addr: ua,
        })
}
fn update() -> impl Strategy<Value = UpdateAnnouncement> {
    (s(), s(), any::<u64>(), any::<u64>(), digest()).prop_map(|(o, n, v, size, h)| {
        UpdateAnnouncement {
            object_id: o,
            name: n,
            version: v,
            size,
            sha256: h,
        }
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (0u32..5, 0u32..5, e(), s(), s()).prop_map(|(a, b, role, n, sw)| Message::from(Hello {
            min_version: a.min(b),
            max_version: a.max(b),
            role,
            node_id: n,
            software: sw
        })),
        (any::<u32>(), e(), s()).prop_map(|(version, role, node_id)| HelloAck {
            version,
            role,
            node_id
        }
        .into()),
        (e(), s()).prop_map(|(code, reason)| Refusal { code, reason }.into()),
        (s(), b(200).prop_filter("csr", |c| !c.is_empty()), s(), s()).prop_map(|(d, c, t, g)| {
            EnrollRequest {
                device_id: d,
                csr_der: c,
                enrollment_token: t,
                group_hint: g,
            }
            .into()
        }),
        (b(200), vec(b(50), 0..3), b(50), s()).prop_map(|(c, ch, ca, g)| EnrollResponse {
            certificate_der: c,
            chain_der: ch,
            ca_der: ca,
            group: g
        }
        .into()),
        b(200)
            .prop_filter("csr", |c| !c.is_empty())
            .prop_map(|c| RenewRequest { csr_der: c }.into()),
        (
            b(200).prop_filter("cert", |c| !c.is_empty()),
            vec(b(50), 0..3),
            b(50)
        )
            .prop_map(|(c, ch, ca)| RenewResponse {
                certificate_der: c,
                chain_der: ch,
                ca_der: ca,
            }
            .into()),
        (
            s(),
            vec((e(), s(), any::<u64>()), 0..4),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            vec(s(), 0..4),
            vec(
                (
                    proptest::option::of(scope()),
                    any::<u64>(),
                    e(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u32>(),
                    key()
                ),
                0..3
            )
        )
            .prop_map(|(d, held, on, free, up, peers, dps)| SyncRequest {
                device_id: d,
                held: held
                    .into_iter()
                    .map(|(kind, id, version)| HeldVersion { kind, id, version })
                    .collect(),
                on_corporate_network: on,
                free_disk_bytes: free,
                uptime_secs: up,
                visible_peers: peers,
                dp_status: dps
                    .into_iter()
                    .map(|(scope, epoch, role, f, u, l, k)| DpStatus {
                        scope,
                        epoch,
                        role,
                        free_disk_bytes: f,
                        uptime_secs: u,
                        load_milli: l,
                        signing_key: k,
                        unicast_addr: String::new(),
                    })
                    .collect(),
            }
            .into()),
        (
            vec((s(), any::<u64>(), b(100)), 0..3),
            vec(s(), 0..3),
            any::<u32>(),
            vec(assignment(), 0..3),
            s(),
            vec(update(), 0..3)
        )
            .prop_map(|(st, rm, next, asg, gw, up)| SyncResponse {
                settings: st
                    .into_iter()
                    .map(|(application, version, json)| AppSettings {
                        application,
                        version,
                        json
                    })
                    .collect(),
                removed_settings: rm,
                next_sync_secs: next,
                assignments: asg,
                gateway: gw,
                updates: up,
            }
            .into()),
        (s(), vec((any::<u64>(), any::<i64>(), e(), s(), s()), 0..4)).prop_map(|(d, ev)| {
            EventBatch {
                device_id: d,
                events: ev
                    .into_iter()
                    .map(|(id, t, sev, kind, body)| Event {
                        id,
                        time_unix_ms: t,
                        severity: sev,
                        kind,
                        body,
                    })
                    .collect(),
            }
            .into()
        }),
        any::<u64>().prop_map(|up_to_id| EventAck { up_to_id }.into()),
        (s(), any::<u64>()).prop_map(|(reason, nonce)| SyncNow { reason, nonce }.into()),
        (s(), any::<u32>(), any::<u32>()).prop_map(|(server_id, keepalive_ms, pool_size)| {
            SignalHello {
                server_id,
                keepalive_ms,
                pool_size,
            }
            .into()
        }),
        (s(), any::<u64>()).prop_map(|(gateway_id, session_id)| SignalHelloAck {
            gateway_id,
            session_id
        }
        .into()),
        (any::<u64>(), any::<bool>()).prop_map(|(seq, reply)| Keepalive { seq, reply }.into()),
        (ticket(), peer(), any::<u32>()).prop_map(|(t, p, x)| ConnectRequest {
            ticket: Some(t),
            peer: Some(p),
            expires_in_ms: x
        }
        .into()),
        (ticket(), e(), s()).prop_map(|(t, code, reason)| ConnectRefusal {
            ticket: Some(t),
            code,
            reason
        }
        .into()),
        (vec(ticket(), 0..4), any::<u32>()).prop_map(|(tickets, expires_in_ms)| PoolTickets {
            tickets,
            expires_in_ms
        }
        .into()),
        (ticket(), any::<u64>()).prop_map(|(t, session_id)| DataAttach {
            ticket: Some(t),
            session_id
        }
        .into()),
        (ticket(), peer()).prop_map(|(t, p)| DataAttachAck {
            ticket: Some(t),
            peer: Some(p)
        }
        .into()),
        (peer(), s(), any::<bool>()).prop_map(|(p, gateway_id, reuse)| TunnelOpen {
            peer: Some(p),
            gateway_id,
            reuse
        }
        .into()),
        (any::<u32>(), any::<bool>()).prop_map(|(idle_timeout_ms, reuse)| TunnelAccept {
            idle_timeout_ms,
            reuse
        }
        .into()),
        assignment().prop_map(Message::from),
        update().prop_map(Message::from),
        (s(), any::<u64>(), any::<u32>()).prop_map(|(object_id, offset, length)| ChunkRequest {
            object_id,
            offset,
            length
        }
        .into()),
        (s(), any::<u64>(), b(3000), any::<u64>()).prop_map(|(o, off, data, total)| {
            ChunkResponse {
                object_id: o,
                offset: off,
                data,
                total_size: total,
            }
            .into()
        }),
    ]
}

fn encode_all(msgs: &[Message]) -> BytesMut {
    let mut codec = MessageCodec::new();
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m, &mut buf).unwrap();
    }
    buf
}

fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Result<Vec<Message>, WireError> {
    let mut codec = MessageCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.push(stream.len());
    for p in points {
        buf.extend_from_slice(&stream[start..p.max(start)]);
        start = p.max(start);
        while let Some(m) = codec.decode(&mut buf)? {
            out.push(m);
        }
    }
    if let Some(m) = codec.decode_eof(&mut buf)? {
        out.push(m);
    }
    Ok(out)
}

#[test]
fn the_strategy_covers_every_message_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5000 {
        seen.insert(
            strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .message_type(),
        );
    }
    for t in MessageType::ALL {
        assert!(seen.contains(t), "{} never generated", t.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(m in message()) {
        let mut buf = encode_all(std::slice::from_ref(&m));
        let back = MessageCodec::new().decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(back, m);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_split_decodes_to_the_same_messages(
        msgs in vec(message(), 1..8),
        cuts in vec(any::<usize>(), 0..16),
    ) {
        let stream = encode_all(&msgs);
        let got = decode_in_pieces(&stream, &cuts).unwrap();
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512), cuts in vec(any::<usize>(), 0..8)) {
        let _ = decode_in_pieces(&data, &cuts);
    }

    #[test]
    fn corrupted_valid_streams_never_panic(
        msgs in vec(message(), 1..4),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let mut stream = encode_all(&msgs).to_vec();
        for (at, x) in flips {
            let i = at % stream.len();
            stream[i] ^= x;
        }
        let _ = decode_in_pieces(&stream, &cuts);
    }

    #[test]
    fn unknown_ignorable_frames_are_skipped(
        before in vec(message(), 0..3),
        after in vec(message(), 0..3),
        ty in 0x7000u16..0x8000,
        junk in b(100),
    ) {
        let mut stream = encode_all(&before);
        let mut fc = FrameCodec::new();
        fc.encode(Frame { message_type: ty, flags: outpost_wire::frame::flags::IGNORABLE, payload: junk }, &mut stream).unwrap();
        stream.extend_from_slice(&encode_all(&after));
        let mut codec = MessageCodec::new();
        let got = decode_in_pieces(&stream, &[]).unwrap();
        let mut want = before.clone();
        want.extend(after.iter().cloned());
        prop_assert_eq!(got, want);
        // And the skip is counted.
        let mut buf = stream.clone();
        while codec.decode(&mut buf).unwrap().is_some() {}
        prop_assert_eq!(codec.skipped_frames(), 1);
    }
}

#[test]
fn unknown_mandatory_frame_is_refused_with_type_and_offset() {
    let first = encode_all(&[Message::from(Keepalive {
        seq: 1,
        reply: false,
    })]);
    let mut stream = first.clone();
    FrameCodec::new()
        .encode(Frame::new(0x7abc, &b"??"[..]), &mut stream)
        .unwrap();
    let mut codec = MessageCodec::new();
    assert!(codec.decode(&mut stream).unwrap().is_some());
    match codec.decode(&mut stream).unwrap_err() {
        WireError::UnknownMessageType {
            offset,
            message_type,
        } => {
            assert_eq!(offset, first.len() as u64);
            assert_eq!(message_type, 0x7abc);
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn unknown_fields_from_a_newer_peer_are_skipped() {
    // A newer SyncNow with an extra field 9 (varint 300) and field 10 (bytes).
    let mut body = BytesMut::new();
    outpost_wire::Message::from(SyncNow {
        reason: "x".into(),
        nonce: 5,
    })
    .encode_body(&mut body);
    body.extend_from_slice(&[9 << 3, 0xAC, 0x02, (10 << 3) | 2, 3, 1, 2, 3]);
    let mut stream = BytesMut::new();
    FrameCodec::new()
        .encode(
            Frame::new(MessageType::SyncNow.code(), body.freeze()),
            &mut stream,
        )
        .unwrap();
    let m = MessageCodec::new().decode(&mut stream).unwrap().unwrap();
    assert_eq!(
        m,
        Message::from(SyncNow {
            reason: "x".into(),
            nonce: 5
        })
    );
}

#[test]
fn malformed_body_names_the_message() {
    let mut stream = BytesMut::new();
    FrameCodec::new()
        .encode(
            Frame::new(
                MessageType::ChunkResponse.code(),
                &[0x1a, 0xff, 0xff, 0x03][..],
            ),
            &mut stream,
        )
        .unwrap();
    let err = MessageCodec::new().decode(&mut stream).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Malformed {
                message: "ChunkResponse",
                offset: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn chunk_payload_is_decoded_without_copying() {
    let data = Bytes::from(vec![0x5a; 64 * 1024]);
    let mut buf = encode_all(&[Message::from(ChunkResponse {
        object_id: "upd-1".into(),
        offset: 0,
        data: data.clone(),
        total_size: data.len() as u64,
    })]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Message::ChunkResponse(c)) = MessageCodec::new().decode(&mut buf).unwrap() else {
        panic!("expected ChunkResponse");
    };
    assert_eq!(c.data, data);
    assert!(
        range.contains(&(c.data.as_ptr() as usize)),
        "data points into the read buffer"
    );
}

#[test]
fn oversized_message_is_refused_on_both_sides() {
    let big = Message::from(ChunkResponse {
        data: Bytes::from(vec![0; 2000]),
        ..Default::default()
    });
    let mut small = MessageCodec::with_max_frame_len(1000);
    let mut buf = BytesMut::new();
    assert!(matches!(
        small.encode(&big, &mut buf),
        Err(WireError::PayloadTooLarge { max: 1000, .. })
    ));
    let mut buf = encode_all(&[big]);
    assert!(matches!(
        small.decode(&mut buf),
        Err(WireError::FrameTooLarge { max: 1000, .. })
    ));
}

#[test]
fn documented_keepalive_bytes() {
    // The example in docs/protocol.md.
    let buf = encode_all(&[Message::from(Keepalive {
        seq: 1,
        reply: false,
    })]);
    assert_eq!(
        &buf[..],
        &[
            0x4f, 0x50, 0x01, 0x01, 0x00, 0x32, 0x00, 0x00, 0x00, 0x02, 0x08, 0x01
        ]
    );
}

#[test]
fn a_forwarded_virtual_server_id_is_bounded() {
    let request = |vs: String| {
        Message::from(ConnectRequest {
            ticket: Some(Ticket::from_u128(7)),
            peer: Some(PeerIdentity {
                virtual_server: vs,
                ..PeerIdentity::default()
            }),
            expires_in_ms: 1000,
        })
    };
    assert!(request("acme".into()).validate(0).is_ok());
    assert!(request("a".repeat(64)).validate(0).is_ok());
    let err = request("a".repeat(65)).validate(0).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::InvalidField {
                field: "peer.virtual_server",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_forwarded_serial_is_bounded_lower_case_hex() {
    let request = |serial: &str| {
        Message::from(ConnectRequest {
            ticket: Some(Ticket::from_u128(7)),
            peer: Some(PeerIdentity {
                cert_serial: serial.into(),
                ..PeerIdentity::default()
            }),
            expires_in_ms: 1000,
        })
    };
    assert!(request("").validate(0).is_ok());
    assert!(request(&"0123456789abcdef".repeat(2)).validate(0).is_ok());
    for bad in ["5789B2", "12 34", "zz", &"a".repeat(41)] {
        let err = request(bad).validate(0).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::InvalidField {
                    field: "peer.cert_serial",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
}
