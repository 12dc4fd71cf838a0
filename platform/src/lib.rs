//! What every cpis service shares, so each concern is done one way: configuration
//! ([`config`]), validated domain types ([`domain`]), the one error type and its mapping to
//! gRPC statuses ([`error`]), the database and its migrations ([`database`]), the optional
//! Redis cache ([`cache`]), TLS to both and the rule that production refuses plaintext ([`datastore`]), health ([`health`]), serving with reflection and graceful stop
//! ([`server`]) with callers admitted before they cost anything ([`admit`]) and malformed wire input answered as bad input ([`wire`]), shutdown
//! ([`shutdown`]), the principal the gateway forwards ([`principal`]), AIP-158 pages
//! ([`pagination`]), one validator per public request message ([`requests`]), files re-read on change
//! ([`reload`]), and what
//! operators see:
//! logs and traces ([`telemetry`]), per-call spans and measurements ([`observe`]) and
//! Prometheus metrics ([`metrics`]).
//!
//! This crate knows no service: services depend on it, never the reverse.

pub mod admit;
pub mod cache;
pub mod config;
pub mod database;
pub mod datastore;
pub mod domain;
pub mod error;
pub mod health;
pub mod inproc;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod pagination;
pub mod principal;
pub mod reload;
pub mod requests;
pub mod runtime;
pub mod server;
pub mod shed;
pub mod shutdown;
pub mod synthetic;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod wire;

/// Every binary built on this crate allocates with mimalloc: under load glibc's allocator was
/// the largest single cost outside PostgreSQL (malloc, free and consolidation, 13% of the
/// machine's CPU in the profile behind docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use error::{Error, Result};
