//! The service binaries as the platform runs them: `--help`, `migrate`, the refusal to trust
//! internal callers without mTLS or `--insecure-internal`, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

const BACKENDS: [&str; 3] = ["flag-service", "attendance-service", "access-service"];

#[test]
fn every_binary_documents_its_flags_and_environment() {
    for name in BACKENDS.iter().chain(&["gateway"]) {
        let out = Command::new(common::binary(name))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        for expected in [
            "CPIS_LISTEN",
            "CPIS_DATABASE_URL",
            "CPIS_HEALTH_LISTEN",
            "migrate",
            "--insecure-internal",
        ] {
            assert!(
                help.contains(expected),
                "{name} --help does not mention {expected}:\n{help}"
            );
        }
    }
    let help = String::from_utf8_lossy(
        &Command::new(common::binary("gateway"))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    for expected in [
        "CPIS_FLAG_URL",
        "CPIS_ATTENDANCE_URL",
        "CPIS_ACCESS_URL",
        "CPIS_JWKS_FILE",
    ] {
        assert!(
            help.contains(expected),
            "gateway --help does not mention {expected}"
        );
    }
}

#[test]
fn migrate_applies_the_schema_and_exits_zero() {
    for name in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(common::binary(name))
            .args(["migrate", "--data-dir"])
            .arg(dir.path())
            .env_remove("CPIS_DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            dir.path().join(format!("{name}.db")).exists(),
            "{name} migrate created no database"
        );
    }
}

#[test]
fn a_backend_refuses_to_start_without_mtls_or_insecure_internal() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::binary("flag-service"))
        .env("CPIS_DATA_DIR", dir.path())
        .env("CPIS_LISTEN", format!("127.0.0.1:{}", common::free_port()))
        .env_remove("CPIS_INSECURE_INTERNAL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-internal"));

    let out = Command::new(common::binary("flag-service"))
        .env("CPIS_DATA_DIR", dir.path())
        .env("CPIS_LISTEN", format!("0.0.0.0:{}", common::free_port()))
        .arg("--insecure-internal")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--insecure-internal must refuse a non-loopback address"
    );
}

#[tokio::test]
async fn every_service_exits_zero_on_sigterm_after_reporting_serving() {
    for name in BACKENDS.iter().chain(&["gateway"]) {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let mut child = Command::new(common::binary(name))
            .env("CPIS_DATA_DIR", dir.path())
            .env("CPIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("CPIS_INSECURE_INTERNAL", "true")
            .env("CPIS_GRACE_PERIOD", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        // The gateway too, with no backend behind it: readiness is "this pod can answer its
        // own calls" (UNAVAILABLE with RetryInfo while a backend is away), never its
        // dependencies' health, which its `backends` entry reports instead.
        common::wait_for_health(addr, "", ServingStatus::Serving).await;
        if *name == "gateway" {
            common::wait_for_health(addr, "backends", ServingStatus::NotServing).await;
        }
        let started = Instant::now();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name} did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "{name} exited with {status:?} after SIGTERM"
        );
    }
}
