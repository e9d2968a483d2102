//! Replays the committed seed corpus of the `api_body` fuzz target through the same entry
//! point, so the target keeps passing under plain `cargo test`.

use std::path::PathBuf;

#[test]
fn api_body_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/api_body");
    let mut parsed = Vec::new();
    let mut refused = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        match outpost_server::api::fuzz_body(&data) {
            Ok(kind) => parsed.push(kind),
            Err(status) => {
                assert!((400..500).contains(&status), "{status}");
                refused += 1;
            }
        }
    }
    parsed.sort_unstable();
    assert_eq!(
        parsed,
        [
            "account",
            "device change",
            "device change",
            "device move",
            "distribution point",
            "enrollment token",
            "gateway",
            "group",
            "login",
            "policy",
            "policy status",
            "virtual server",
            "virtual server change"
        ],
        "the valid seeds parse"
    );
    assert_eq!(refused, 9, "the broken seeds are refused");
}
