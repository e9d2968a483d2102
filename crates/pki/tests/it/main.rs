//! The integration tests, in one binary: each module was a test file of its own.

mod common;
mod handshake;
mod issuance;
mod properties;
mod store_rotation;
