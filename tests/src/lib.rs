//! The harness the cross-service tests and the benchmark share: the whole system as separate
//! processes on loopback, the way production runs it (three backends with mTLS, the gateway in
//! front), with certificates made by rcgen at run time. The tests themselves live in `tests/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod metrics;
pub mod system;

use std::path::PathBuf;
use std::time::Duration;

/// `message` as a request carrying `token` as its bearer, with a deadline of `timeout`.
pub fn with_token<T>(message: T, token: &str, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.set_timeout(timeout);
    request
}

/// A workspace binary (`gateway`, `flag-service`, ..., `cpis`), built beside the running
/// executable (a test under `deps/`, or `cpis-bench`). `tests/run.sh` builds them first
/// (`cargo build --bins`).
pub fn binary(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("executable path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// A port free on loopback now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
