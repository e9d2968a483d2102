//! The integration tests, in one binary: each module was a test file of its own.

mod common;
mod deadlines;
mod relay;
mod signal;
