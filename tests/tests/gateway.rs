//! The public API end to end: the four services as separate processes with mTLS between them,
//! driven through generated tonic clients, on PostgreSQL and Redis (when the test servers are
//! configured, as in CI; SQLite otherwise). `gateway_sqlite.rs` runs the same cases on SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

const ON_POSTGRES: bool = true;

include!("common/gateway_cases.rs");
