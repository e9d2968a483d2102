//! Certificate renewal on a virtual clock: over several certificate lives, with the server
//! often unreachable, an agent that polls its schedule at least every two days always holds
//! a valid certificate, and switches only to a certificate that outlives the one it had.

use std::time::{Duration, SystemTime};

use outpost_agent::renewal::{Renewal, Schedule, Step, Validity};
use proptest::prelude::*;

const DAY: Duration = Duration::from_secs(86_400);
const LIFE: Duration = Duration::from_secs(397 * 86_400);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_polling_agent_is_never_left_without_a_valid_certificate(
        // Hours between two polls (at most two days).
        gaps in proptest::collection::vec(1u64..=48, 1..64),
        // Whether the server answers each request (cycled), at least one in eight.
        answers in proptest::collection::vec(any::<bool>(), 8)
            .prop_filter("the server answers sometimes", |a| a.iter().any(|x| *x)),
        // Seconds the server takes to answer.
        latency in 0u64..3_600,
    ) {
        let start = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let mut r = Renewal::new(Schedule::default(), Validity::new(start, start + LIFE), None);
        let mut now = start;
        let mut asked = 0usize;
        let mut switches = 0;
        let until = start + LIFE * 4;
        let mut i = 0usize;
        while now < until {
            let active = r.active();
            prop_assert!(
                now >= active.not_before && now < active.not_after,
                "no valid certificate at {:?} (active {:?})", now, active
            );
            match r.poll(now) {
                Step::RequestReserve => {
                    let answered = answers[asked % answers.len()];
                    asked += 1;
                    if answered {
                        let issued = now + Duration::from_secs(latency);
                        r.reserve_received(Validity::new(issued, issued + LIFE)).unwrap();
                    } else {
                        r.request_failed(now);
                    }
                }
                Step::Switch => {
                    let before = r.active();
                    r.switched();
                    prop_assert!(r.active().not_after > before.not_after);
                    switches += 1;
                }
                _ => {}
            }
            // The driver wakes at the schedule's next time or at its next poll, whichever
            // comes first.
            let next = now + Duration::from_secs(gaps[i % gaps.len()] * 3_600);
            i += 1;
            now = match r.poll_timeout() {
                Some(t) if t > now && t < next => t,
                _ => next,
            };
        }
        prop_assert!(switches >= 3, "{} switches over four lives", switches);
    }
}
