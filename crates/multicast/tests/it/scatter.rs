//! Scatter reads (a symbol read straight into its block, as the Linux driver does): whatever
//! lands in a slot, the receiver ends in the same state, with the same bytes, as one fed
//! whole datagrams.

use std::time::Instant;

use outpost_multicast::packet::{DATA_HEADER_LEN, Packet};
use outpost_multicast::sender::announce_packets;
use outpost_multicast::sim::deliver_scattered;
use outpost_multicast::{Manifest, Receiver, ReceiverConfig, ReceiverEvent, SigningKey};
use proptest::prelude::*;

use crate::common;
use common::{data_packet, file, from};

const T: u16 = 64;
const K: u32 = 8;
const SESSION: u64 = 21;

fn receiver(m: &Manifest, key: &SigningKey) -> Receiver {
    let mut rx = Receiver::new(ReceiverConfig::default(), &key.public_key()).unwrap();
    for p in announce_packets(SESSION, &m.sign(key.key_pair()), 256).unwrap() {
        rx.handle_datagram(Instant::now(), from(), &p);
    }
    assert!(rx.manifest().is_some());
    rx
}

fn setup() -> (Vec<u8>, Manifest, SigningKey) {
    let key = SigningKey::from_seed(&[6u8; 32]).unwrap();
    let data = file(3 * (K * u32::from(T)) as usize - 17, 5);
    let m = Manifest::for_bytes(SESSION, "s.bin", &data, T, K).unwrap();
    (data, m, key)
}

/// The file put together from the receiver's verified blocks, and every event it gave.
fn drain(rx: &mut Receiver, len: usize, out: &mut Vec<u8>, events: &mut Vec<ReceiverEvent>) {
    out.resize(len, 0);
    while let Some(ev) = rx.poll_event() {
        if let ReceiverEvent::BlockVerified { offset, data, .. } = &ev {
            out[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
        }
        events.push(ev);
    }
}

#[test]
fn symbol_read_into_its_slot_completes_the_block() {
    let (data, m, key) = setup();
    let mut rx = receiver(&m, &key);
    assert!(rx.symbol_slot().is_none(), "no slot before any symbol");
    let now = Instant::now();
    rx.handle_datagram(
        now,
        from(),
        &data_packet(SESSION, 1, 0, 0, &common::symbol(&data, T, K, 0, 0)),
    );
    for esi in 1..K {
        // Only the header goes in the header buffer; the symbol's bytes reach the receiver
        // through the slot alone.
        let slot = rx.symbol_slot().expect("slot for the next symbol");
        assert_eq!(slot.len(), usize::from(T));
        slot.copy_from_slice(&common::symbol(&data, T, K, 0, esi));
        let p = data_packet(SESSION, u64::from(esi) + 1, 0, esi, &[0]);
        rx.handle_scattered(
            now,
            from(),
            &p[..DATA_HEADER_LEN],
            &[],
            DATA_HEADER_LEN + usize::from(T),
        );
    }
    assert_eq!(rx.stats().source_symbols, u64::from(K));
    assert_eq!(rx.blocks_done(), 1);
    let block = (0..)
        .map_while(|_| rx.poll_event())
        .find_map(|ev| match ev {
            ReceiverEvent::BlockVerified { block: 0, data, .. } => Some(data),
            _ => None,
        })
        .expect("block 0 verified");
    assert_eq!(block, data[..(K * u32::from(T)) as usize]);
}

#[test]
fn other_packets_landing_in_the_slot_are_put_back_together() {
    let (data, m, key) = setup();
    let mut rx = receiver(&m, &key);
    let now = Instant::now();
    let sym = |esi| common::symbol(&data, T, K, 0, esi);
    rx.handle_datagram(now, from(), &data_packet(SESSION, 1, 0, 0, &sym(0)));
    // Symbol 2 arrives where 1 was expected: taken, and stored at its own place.
    deliver_scattered(
        &mut rx,
        now,
        from(),
        &data_packet(SESSION, 3, 0, 2, &sym(2)),
    );
    // The same symbol id for another session, then one symbol short: both dropped.
    deliver_scattered(
        &mut rx,
        now,
        from(),
        &data_packet(SESSION + 1, 4, 0, 1, &sym(1)),
    );
    let short = &sym(1)[..usize::from(T) - 1];
    deliver_scattered(&mut rx, now, from(), &data_packet(SESSION, 5, 0, 1, short));
    // A poll lands across header, slot and nothing else.
    let mut poll = Vec::new();
    Packet::Poll {
        session: SESSION,
        poll: 1,
        upto_block: 0,
        high_seq: 5,
    }
    .encode(&mut poll);
    deliver_scattered(&mut rx, now, from(), &poll);
    let s = rx.stats().clone();
    assert_eq!(s.source_symbols, 2);
    assert_eq!(s.unknown_session, 1);
    assert_eq!(s.bad_data, 1);
    assert_eq!(s.malformed, 0);
    // The rest, scattered: the block must hold the real symbols, not what landed earlier.
    for esi in [1, 3, 4, 5, 6, 7] {
        deliver_scattered(
            &mut rx,
            now,
            from(),
            &data_packet(SESSION, 9, 0, esi, &sym(esi)),
        );
    }
    assert_eq!(rx.blocks_done(), 1);
    assert_eq!(rx.stats().blocks_rejected, 0);
}

/// One datagram of a random stream: real, repair, forged, foreign, cut, padded or junk.
fn datagram(data: &[u8], m: &Manifest, kind: u8, block: u32, esi: u32, junk: &[u8]) -> Vec<u8> {
    let seq = u64::from(block * 100 + esi);
    let sym = common::symbol(data, T, K, block, esi);
    match kind {
        0..=3 => data_packet(SESSION, seq, block, esi, &sym),
        4 => {
            let (id, r) = common::repair(data, m, T, K, block, esi);
            data_packet(SESSION, seq, block, id, &r)
        }
        5 => {
            let mut f = sym;
            f[0] ^= 0x5a;
            data_packet(SESSION, seq, block, esi, &f)
        }
        6 => data_packet(SESSION ^ 0xff, seq, block, esi, &sym),
        7 => data_packet(SESSION, seq, block, esi, &sym[..usize::from(T) / 2]),
        8 => {
            let mut long = sym;
            long.extend_from_slice(junk);
            long.push(0);
            data_packet(SESSION, seq, block, esi, &long)
        }
        _ => junk.to_vec(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scattered_and_whole_reads_end_the_same(
        stream in proptest::collection::vec(
            (0u8..10, 0u32..3, 0u32..K, proptest::collection::vec(any::<u8>(), 0..80)),
            0..120,
        ),
    ) {
        let (data, m, key) = setup();
        let mut whole = receiver(&m, &key);
        let mut scattered = receiver(&m, &key);
        let now = Instant::now();
        let (mut out_w, mut out_s) = (Vec::new(), Vec::new());
        let (mut ev_w, mut ev_s) = (Vec::new(), Vec::new());
        // The random stream, then every real source symbol in order, twice, so every block
        // ends verified (a forged symbol makes its block be thrown away once it is complete,
        // at the latest by the end of the first pass, and collected again in the second).
        let tail = (0..2)
            .flat_map(|_| 0..3)
            .flat_map(|b| (0..K).map(move |e| (0u8, b, e, Vec::new())));
        for (kind, block, esi, junk) in stream.into_iter().chain(tail) {
            let d = datagram(&data, &m, kind, block, esi, &junk);
            whole.handle_datagram(now, from(), &d);
            deliver_scattered(&mut scattered, now, from(), &d);
            drain(&mut whole, data.len(), &mut out_w, &mut ev_w);
            drain(&mut scattered, data.len(), &mut out_s, &mut ev_s);
        }
        prop_assert_eq!(whole.stats(), scattered.stats());
        prop_assert_eq!(&ev_w, &ev_s);
        prop_assert_eq!(scattered.blocks_done(), 3);
        prop_assert!(out_s == data, "scattered receiver's file differs");
        let sent_w: Vec<_> = std::iter::from_fn(|| whole.poll_transmit()).collect();
        let sent_s: Vec<_> = std::iter::from_fn(|| scattered.poll_transmit()).collect();
        prop_assert_eq!(sent_w, sent_s);
    }
}
