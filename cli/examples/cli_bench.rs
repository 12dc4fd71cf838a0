//! Figures for the command line, against an in-process `cpis dev` (SQLite) on this machine:
//! how fast an upload file's structure is checked, how fast `cpis upload` streams a
//! full-size (50,000-record) upload, and how fast `cpis demo-data --load` runs lookups.
//!
//! cargo run --release -p cpis-cli --example cli_bench

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cpis_cli::connect::{Gateway, GatewayArgs};
use cpis_cli::dev::{self, DevArgs};
use cpis_cli::{demo, devkeys, token, upload, upload_csv};
use platform::shutdown::Shutdown;
use std::time::{Duration, Instant};

fn args(url: &str, token: String) -> GatewayArgs {
    GatewayArgs {
        gateway: url.to_owned(),
        token: Some(token),
        ca_cert: None,
        client_cert: None,
        client_key: None,
        deadline: Duration::from_secs(120),
    }
}

#[tokio::main]
async fn main() {
    let today = chrono::NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
    // One LA holding 50,000 flags: the largest upload the API takes.
    let big = demo::generate(
        9,
        demo::Sizes {
            las: 1,
            trusts: 1,
            flags: upload_csv::MAX_RECORDS,
            attendances: 0,
        },
        today,
    );
    let bytes = upload_csv::write_upload_csv(&big.local_authorities[0].flags).unwrap();
    let rounds = 10;
    let started = Instant::now();
    for _ in 0..rounds {
        assert_eq!(
            upload_csv::parse_located(&bytes).unwrap().len(),
            upload_csv::MAX_RECORDS
        );
    }
    let per = started.elapsed() / rounds;
    println!(
        "structure check: {} records ({:.1} MiB) in {:.1} ms = {:.0} records/s",
        upload_csv::MAX_RECORDS,
        bytes.len() as f64 / (1024.0 * 1024.0),
        per.as_secs_f64() * 1000.0,
        upload_csv::MAX_RECORDS as f64 / per.as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let system = dev::start(
        &DevArgs {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            demo: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        },
        shutdown,
    )
    .await
    .unwrap();
    let url = format!("http://{}", system.gateway_addr);
    let keys = devkeys::load(dir.path()).unwrap();
    let sign = |user: &str, org: &str, activity: &str| {
        token::sign(
            &keys,
            user,
            org,
            "R9000",
            &[activity.to_owned()],
            Duration::from_secs(3600),
        )
        .unwrap()
    };

    // The demo loader onboards the organisations (waiting for readiness) and runs the lookups.
    let small = demo::generate(
        1,
        demo::Sizes {
            las: 20,
            trusts: 5,
            flags: 200,
            attendances: 2000,
        },
        today,
    );
    let started = Instant::now();
    let report = demo::load(&small, &args(&url, String::new()), dir.path())
        .await
        .map_err(|f| f.render())
        .unwrap();
    let took = started.elapsed();
    println!(
        "demo load: {} organisations, {} flags, {} notifying lookups in {:.2} s (8 in flight)",
        report.organisations,
        report.accepted,
        report.lookups,
        took.as_secs_f64()
    );

    // LA 101 exists and is onboarded now; upload the 50,000 records as `cpis upload` does.
    let gateway = Gateway::connect(&args(&url, sign("la", "101", "CPIS_LA_MANAGE"))).unwrap();
    for batch in [1000usize, 5000] {
        let records = upload_csv::parse_located(&bytes).unwrap();
        let started = Instant::now();
        let answer = upload::send(&gateway, &format!("bench-{batch}"), records, batch, false)
            .await
            .map_err(|f| f.render())
            .unwrap();
        let took = started.elapsed();
        assert_eq!(
            answer.accepted as usize,
            upload_csv::MAX_RECORDS,
            "{}",
            answer.rejected
        );
        println!(
            "upload: {} records in batches of {batch}: {:.2} s = {:.0} records/s",
            upload_csv::MAX_RECORDS,
            took.as_secs_f64(),
            upload_csv::MAX_RECORDS as f64 / took.as_secs_f64()
        );
    }
    trigger.fire();
    for (_, running) in system.components {
        let _ = running.wait().await;
    }
}
