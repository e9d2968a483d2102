//! # outpost-testkit
//!
//! What the workspace's tests share, so each crate's tests do not grow their own copy:
//!
//! - [`corpus`]: the committed seed corpus of a fuzz target (`fuzz/corpus/<target>`), for
//!   the unit test that replays it through the target's entry point;
//! - [`payload`]: deterministic bytes from a seed (the workspace's one generator,
//!   [`outpost_wire::rng::SplitMix64`]);
//! - [`wait_until`] and [`bounded`]: waits that end by themselves, so a bug shows as a
//!   failure naming what did not happen, never as a hung test.
//!
//! Not published: a dev-dependency only.
//!
//! ```
//! let a = outpost_testkit::payload(7, 1000);
//! assert_eq!(a, outpost_testkit::payload(7, 1000));
//! assert_ne!(a, outpost_testkit::payload(8, 1000));
//! assert!(!outpost_testkit::corpus("wire_decode").is_empty());
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use outpost_wire::rng::SplitMix64;

/// The files of fuzz target `target`'s seed corpus, as `(file name, bytes)` sorted by name.
///
/// # Panics
/// If the corpus directory is missing or empty (a replay that reads nothing proves nothing).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                bytes,
            )
        })
        .collect();
    assert!(!files.is_empty(), "{} holds no seed", dir.display());
    files.sort();
    files
}

/// `len` bytes determined by `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    SplitMix64::new(seed).fill(&mut out);
    out
}

/// Waits until `cond` holds, looking every 20 ms for at most `limit` of tokio's clock (so a
/// test on a paused clock waits in virtual time).
///
/// # Panics
/// Naming `what` when `limit` passes first.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `f` for at most a minute.
///
/// # Panics
/// Naming `what` when it takes longer.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}
