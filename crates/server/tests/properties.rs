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
