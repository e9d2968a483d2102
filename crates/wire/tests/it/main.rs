//! The integration tests, in one binary: each module was a test file of its own.

mod loopback;
mod roundtrip;
