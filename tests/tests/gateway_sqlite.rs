//! The same end-to-end cases as `gateway.rs`, every backend on its embedded SQLite default.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

const ON_POSTGRES: bool = false;

include!("common/gateway_cases.rs");
