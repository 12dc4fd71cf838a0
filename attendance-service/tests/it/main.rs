//! attendance-service integration tests: storage on SQLite and PostgreSQL, retention under
//! concurrent writes, and the gRPC service as served. One binary, so it links once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod grpc;
mod retention;
mod storage;
mod support;
