//! The integration tests, in one binary: each module was a test file of its own.

mod accounts;
mod api;
mod common;
mod dp;
mod fleet;
mod openapi;
mod policy_sync;
mod properties;
mod registry;
mod runtime;
mod service;
mod storage;
