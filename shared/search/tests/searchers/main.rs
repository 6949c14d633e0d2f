//! The search crate's integration tests: one binary, one module per concern.

mod common;
mod factory;
mod hill;
mod learning;
mod models;
mod observe;
mod persistence;
mod space;
mod tune;
mod warm;
