//! Replays the committed seed corpus of the `agent_discovery` fuzz target through the same
//! entry point, so the target keeps passing under plain `cargo test`.

use std::path::PathBuf;

#[test]
fn agent_discovery_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/agent_discovery");
    let (mut files, mut decoded) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        decoded += usize::from(outpost_agent::discovery::fuzz_decode(&data).is_some());
        files += 1;
    }
    assert!(files >= 5, "seed corpus has only {files} files");
    assert_eq!(decoded, 1, "exactly the one valid seed decodes");
}
