//! Replays the committed seed corpus of the `wire_decode` fuzz target through the same entry
//! point, so the target keeps building and its seeds keep passing under plain `cargo test`.

use std::path::PathBuf;

#[test]
fn wire_decode_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_decode");
    let mut count = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        decoded += outpost_wire::fuzz::decode_stream(&data).len();
        count += 1;
    }
    assert!(count >= 5, "seed corpus has only {count} files");
    assert!(decoded > 0, "no seed decodes to any message");
}

#[test]
fn wire_push_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_push");
    let (mut files, mut decoded) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        decoded += usize::from(outpost_wire::fuzz::decode_push(&data));
        files += 1;
    }
    assert!(files >= 5, "seed corpus has only {files} files");
    assert_eq!(
        decoded, 2,
        "the two valid seeds decode, the broken ones do not"
    );
}
