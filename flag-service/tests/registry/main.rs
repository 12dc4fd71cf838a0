//! flag-service through its gRPC API, on SQLite and (when configured) PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod common;
mod crash;
mod flags;
mod outbox;
mod restrictions;
mod upload_bounds;
mod uploads;
