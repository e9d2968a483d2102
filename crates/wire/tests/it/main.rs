//! The integration tests, in one binary: each module was a test file of its own.

mod fuzz_corpus;
mod loopback;
mod roundtrip;
