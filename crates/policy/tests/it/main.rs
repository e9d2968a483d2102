//! The integration tests, in one binary: each module was a test file of its own.

mod common;
mod profile_edits;
mod props;
mod rules;
