//! The integration tests, in one binary: each module was a test file of its own.

mod backlog;
mod bad_input;
mod codec;
mod common;
mod ipv6_netns;
mod offload;
mod repair;
mod scatter;
mod sim;
mod socket;
