//! Repair planning against a receiver that answers late: repair sent after a poll is not
//! counted by a NAK answering that poll, so it is not sent twice, and what the receiver
//! still lacks after seeing it is repaired anew.

use std::time::{Duration, Instant};

use outpost_multicast::Sender;
use outpost_multicast::packet::{BlockCount, Packet};

use crate::common;
use common::from;

const T: u16 = 64;
const K: u32 = 32;
const SESSION: u64 = 31;

/// What the sender put on the wire, as far as this test cares.
#[derive(Debug, PartialEq)]
enum Sent {
    Source,
    Repair { block: u32 },
    Poll { poll: u32 },
    Other,
}

struct Harness {
    sender: Sender,
    now: Instant,
}

impl Harness {
    fn new() -> Harness {
        let (sender, now) = common::small_sender(SESSION, T, K, 6, |c| {
            c.proactive_fec_permille = 0;
            c.repair_margin = 1;
        });
        Harness { sender, now }
    }

    /// Everything the sender sends until (and including) its next poll, or nothing more
    /// to send for a while.
    fn until_poll(&mut self) -> Vec<Sent> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..10_000 {
            if !self.sender.poll_transmit(self.now, &mut buf).unwrap() {
                self.now += Duration::from_millis(1);
                continue;
            }
            let sent = match Packet::decode(&buf).unwrap() {
                Packet::Data { esi, .. } if esi < K => Sent::Source,
                Packet::Data { block, .. } => Sent::Repair { block },
                Packet::Poll { poll, .. } => Sent::Poll { poll },
                _ => Sent::Other,
            };
            let is_poll = matches!(sent, Sent::Poll { .. });
            out.push(sent);
            if is_poll {
                return out;
            }
        }
        out
    }

    fn nak(&mut self, poll: u32, block: u32, missing: u32) {
        let mut nak = Vec::new();
        Packet::Nak {
            session: SESSION,
            poll,
            loss_permille: 0,
            entries: vec![BlockCount {
                block,
                count: missing,
            }],
        }
        .encode(&mut nak);
        self.sender.handle_datagram(self.now, from(), &nak);
    }
}

fn repairs(sent: &[Sent], block: u32) -> usize {
    sent.iter()
        .filter(|s| **s == Sent::Repair { block })
        .count()
}

#[test]
fn a_late_nak_does_not_bring_the_same_repair_twice() {
    let mut h = Harness::new();
    let first = h.until_poll();
    assert_eq!(first.last(), Some(&Sent::Poll { poll: 1 }));
    let second = h.until_poll();
    assert_eq!(second.last(), Some(&Sent::Poll { poll: 2 }));
    // The receiver's answer to poll 1 arrives only now, after poll 2 went out: block 0
    // lacks 3 symbols. The sender sends 3 + margin after poll 2.
    h.nak(1, 0, 3);
    let third = h.until_poll();
    assert_eq!(repairs(&third, 0), 4, "{third:?}");
    assert_eq!(third.last(), Some(&Sent::Poll { poll: 3 }));
    // Its answer to poll 2 was computed before those repairs reached it: the same 3. They
    // are already on their way, so nothing more is sent for block 0.
    h.nak(2, 0, 3);
    let fourth = h.until_poll();
    assert_eq!(repairs(&fourth, 0), 0, "{fourth:?}");
    assert_eq!(h.sender.stats().repair_packets, 4);
    // Having seen them (its answer to poll 3), it still lacks 2: those are sent anew.
    h.nak(3, 0, 2);
    let fifth = h.until_poll();
    assert_eq!(repairs(&fifth, 0), 3, "{fifth:?}");
    assert_eq!(h.sender.stats().repair_packets, 7);
}

#[test]
fn naks_for_the_same_poll_are_planned_for_the_worst_receiver() {
    let mut h = Harness::new();
    h.until_poll();
    // Two receivers answer poll 1: the sender plans for the one that lacks most (5 +
    // margin), not the sum.
    h.nak(1, 0, 2);
    h.nak(1, 0, 5);
    h.nak(1, 0, 4);
    let next = h.until_poll();
    assert_eq!(repairs(&next, 0), 6, "{next:?}");
}
