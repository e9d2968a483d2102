//! The integration tests, in one binary: each module was a test file of its own.

mod distribution;
mod loopback;
mod overlay;
mod protocol;
mod renewal;
mod republish;
