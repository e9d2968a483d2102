//! Bad input: forged, tampered, unknown-session and oversized packets are dropped and
//! counted; none writes a byte or panics.

use std::time::Instant;

use outpost_multicast::packet::Packet;
use outpost_multicast::sender::announce_packets;
use outpost_multicast::{
    Manifest, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig, SigningKey,
};

use crate::common;
use common::from;

/// A data packet with sequence number 0.
fn data_packet(session: u64, block: u32, esi: u32, symbol: &[u8]) -> Vec<u8> {
    common::data_packet(session, 0, block, esi, symbol)
}

/// The manifest's announce datagrams, in 256-byte pieces.
fn announce(session: u64, signed: &[u8]) -> Vec<Vec<u8>> {
    announce_packets(session, signed, 256).unwrap()
}

fn setup() -> (SigningKey, Vec<u8>, Manifest) {
    let key = SigningKey::from_seed(&[1u8; 32]).unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let m = Manifest::for_bytes(5, "a.bin", &data, 100, 10).unwrap();
    (key, data, m)
}

fn no_writes(rx: &mut Receiver) {
    while let Some(ev) = rx.poll_event() {
        assert!(
            !matches!(ev, ReceiverEvent::BlockVerified { .. }),
            "unexpected write: {ev:?}"
        );
    }
}

#[test]
fn forged_manifest_is_rejected() {
    let (key, _, m) = setup();
    let other = SigningKey::from_seed(&[2u8; 32]).unwrap();
    let mut rx = Receiver::new(ReceiverConfig::default(), &key.public_key()).unwrap();
    let now = Instant::now();
    for p in announce(5, &m.sign(other.key_pair())) {
        rx.handle_datagram(now, from(), &p);
    }
    assert_eq!(rx.stats().manifests_rejected, 1);
    assert!(rx.manifest().is_none());
    // Data for the unauthenticated session is dropped.
    rx.handle_datagram(now, from(), &data_packet(5, 0, 0, &[0u8; 100]));
    assert_eq!(rx.stats().unknown_session, 1);
    no_writes(&mut rx);
}

#[test]
fn tampered_manifest_is_rejected() {
    let (key, _, m) = setup();
    let mut signed = m.sign(key.key_pair());
    signed[20] ^= 0x40; // inside the file size
    let mut rx = Receiver::new(ReceiverConfig::default(), &key.public_key()).unwrap();
    for p in announce(5, &signed) {
        rx.handle_datagram(Instant::now(), from(), &p);
    }
    assert_eq!(rx.stats().manifests_rejected, 1);
    assert!(rx.manifest().is_none());
}

#[test]
fn absurd_sizes_are_rejected_even_when_signed() {
    let key = SigningKey::from_seed(&[1u8; 32]).unwrap();
    let mut m = Manifest::for_bytes(6, "big.bin", &[0u8; 10], 100, 10).unwrap();
    // Claims 1 PiB with one block hash: inconsistent and over the limit.
    m.file_size = 1 << 50;
    let mut rx = Receiver::new(ReceiverConfig::default(), &key.public_key()).unwrap();
    for p in announce(6, &m.sign(key.key_pair())) {
        rx.handle_datagram(Instant::now(), from(), &p);
    }
    assert_eq!(rx.stats().manifests_rejected, 1);
    let err = Manifest::decode_verified(
        &m.sign(key.key_pair()),
        &key.public_key(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("file_size") && err.contains(&(1u64 << 50).to_string()),
        "{err}"
    );
    // An announcement claiming a 1 GiB manifest allocates nothing and is counted.
    let mut p = Vec::new();
    Packet::Announce {
        session: 7,
        chunk: 0,
        chunks: 1,
        total: 1 << 30,
        bytes: &[0u8; 10],
    }
    .encode(&mut p);
    rx.handle_datagram(Instant::now(), from(), &p);
    assert_eq!(rx.stats().bad_announce, 1);
}

#[test]
fn forged_and_malformed_data_write_nothing() {
    let (key, data, m) = setup();
    let mut rx = Receiver::new(ReceiverConfig::default(), &key.public_key()).unwrap();
    let now = Instant::now();
    for p in announce(5, &m.sign(key.key_pair())) {
        rx.handle_datagram(now, from(), &p);
    }
    assert!(matches!(
        rx.poll_event(),
        Some(ReceiverEvent::ManifestAccepted(_))
    ));
    // Wrong length, out-of-range block, unknown session, garbage.
    rx.handle_datagram(now, from(), &data_packet(5, 0, 0, &[0u8; 99]));
    rx.handle_datagram(now, from(), &data_packet(5, 99, 0, &[0u8; 100]));
    rx.handle_datagram(now, from(), &data_packet(6, 0, 0, &[0u8; 100]));
    rx.handle_datagram(now, from(), &[0x4f, 0x4d, 1]);
    assert_eq!(rx.stats().bad_data, 2);
    assert_eq!(rx.stats().unknown_session, 1);
    assert_eq!(rx.stats().malformed, 1);
    // A full block of forged symbols: assembled, fails its hash, thrown away, not written.
    for esi in 0..10 {
        rx.handle_datagram(now, from(), &data_packet(5, 0, esi, &[0xAAu8; 100]));
    }
    assert_eq!(rx.stats().blocks_rejected, 1);
    no_writes(&mut rx);
    // The genuine symbols still complete the block afterwards.
    for esi in 0..10u32 {
        let s = &data[esi as usize * 100..esi as usize * 100 + 100];
        rx.handle_datagram(now, from(), &data_packet(5, 0, esi, s));
    }
    match rx.poll_event() {
        Some(ReceiverEvent::BlockVerified {
            block: 0,
            offset: 0,
            data: d,
        }) => assert_eq!(d, &data[..1000]),
        other => panic!("expected block 0, got {other:?}"),
    }
    // Offering a wrong block by unicast is an error naming the block.
    let err = rx.offer_block(1, &[0u8; 1000]).unwrap_err().to_string();
    assert!(err.contains("block 1"), "{err}");
    let err = rx.offer_block(1, &[0u8; 3]).unwrap_err().to_string();
    assert!(err.contains("length") && err.contains('3'), "{err}");
}

#[test]
fn forged_naks_and_garbage_do_not_disturb_the_sender() {
    let (key, data, m) = setup();
    let signed = m.sign(key.key_pair());
    let now = Instant::now();
    let mut s = Sender::new(SenderConfig::default(), m, &signed, Box::new(data), now).unwrap();
    s.handle_datagram(now, from(), b"garbage");
    let mut nak = Vec::new();
    Packet::Nak {
        session: 99,
        poll: 0,
        loss_permille: 0,
        entries: vec![],
    }
    .encode(&mut nak);
    s.handle_datagram(now, from(), &nak);
    // NAK for blocks never sent and from a poll never made.
    let mut nak = Vec::new();
    Packet::Nak {
        session: 5,
        poll: 7,
        loss_permille: 0,
        entries: vec![outpost_multicast::packet::BlockCount {
            block: 3,
            count: 1_000_000,
        }],
    }
    .encode(&mut nak);
    s.handle_datagram(now, from(), &nak);
    assert_eq!(s.stats().malformed, 1);
    assert_eq!(s.stats().foreign_session, 1);
    assert_eq!(s.stats().bad_nak_entries, 1);
    assert_eq!(s.stats().repair_packets, 0);
}

#[test]
fn configs_name_the_bad_field() {
    let mut c = SenderConfig::default();
    c.symbol_size = 3;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("symbol_size")
    );
    let mut c = SenderConfig::default();
    c.backoff_factor = 1.5;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("backoff_factor")
    );
    let mut r = ReceiverConfig::default();
    r.idle_timeout_ms = 0;
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .contains("idle_timeout_ms")
    );
    assert!(
        Receiver::new(ReceiverConfig::default(), &[0u8; 5])
            .unwrap_err()
            .to_string()
            .contains("sender_key")
    );
    // Files a person writes: defaults fill what is left out, unknown fields are refused.
    let c: SenderConfig = toml::from_str("max_rate_bps = 50000000").unwrap();
    assert_eq!(c.max_rate_bps, 50_000_000);
    assert_eq!(c.symbol_size, SenderConfig::default().symbol_size);
    let e = toml::from_str::<ReceiverConfig>("idle_timeout = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("idle_timeout"), "{e}");
}
