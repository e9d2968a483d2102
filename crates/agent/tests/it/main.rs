//! The integration tests, in one binary: each module was a test file of its own.

mod core;
mod distribution;
mod loopback;
mod overlay;
mod renewal;
mod republish;
