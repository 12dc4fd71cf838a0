//! Decisions per second with durable audit on PostgreSQL, through gRPC, at several
//! concurrencies. Needs a PostgreSQL server (a throwaway database is created and dropped):
//!
//!   CPIS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p access-service --example decide_bench [seconds-per-level]
//!
//! Four in five requests are allowed notifying lookups (each writes an audit record and an
//! obligation); one in five is denied (an audit record only). The client runs in the same
//! process as the server, so both share the machine with PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use access_service::{AccessArgs, AccessService};
use cpis_proto::access::access_control_client::AccessControlClient;
use cpis_proto::access::{DecideRequest, Principal};
use cpis_proto::gateway::{Setting, UpsertOrganisationRequest};
use platform::runtime::Component;
use platform::shutdown::Shutdown;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn request(i: u64) -> DecideRequest {
    let site = if i.is_multiple_of(5) {
        "RQY01"
    } else {
        "RQX01"
    };
    DecideRequest {
        principal: Some(Principal {
            user_id: format!("clinician{}", i % 50),
            ods_code: "RQX".into(),
            role_code: "R8000".into(),
            activities: vec!["B0107".into()],
            assurance_level: 3,
            ..Default::default()
        }),
        action: "LookupChild".into(),
        nhs_number: "9434765919".into(),
        access_kind: 1,
        setting: Some(Setting {
            ods_code: site.into(),
            setting_type: 1,
        }),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let db = platform::testing::postgres("bench")
        .await
        .expect("set CPIS_TEST_POSTGRES_URL to a PostgreSQL server");
    let dir = tempfile::tempdir().unwrap();
    let mut args = AccessArgs::embedded(dir.path().to_path_buf());
    args.serve.database.database_url = Some(db.url.clone());
    let (trigger, shutdown) = Shutdown::new();
    let running = AccessService::start(args, shutdown).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AccessControlClient::new(channel.clone());

    let admin = Principal {
        user_id: "admin".into(),
        ods_code: "X26".into(),
        activities: vec!["CPIS_ADMIN".into()],
        ..Default::default()
    };
    // Readiness: retry the first call until migrations ran.
    loop {
        let mut r = tonic::Request::new(UpsertOrganisationRequest {
            ods_code: "RQX".into(),
            name: "Bench Trust".into(),
            kind: 2,
            onboarded: true,
        });
        platform::principal::attach(r.metadata_mut(), &admin);
        if client.upsert_organisation(r).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm up connections and caches.
    for i in 0..200 {
        client.decide(request(i)).await.unwrap();
    }

    println!(
        "PostgreSQL, durable commits; {seconds} s per level; 80% allowed notifying lookups, 20% denied"
    );
    println!(
        "{:>11} {:>12} {:>10} {:>10} {:>10}",
        "concurrency", "decisions/s", "p50 ms", "p99 ms", "total"
    );
    for concurrency in [1usize, 8, 32, 128, 256] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                let mut client = AccessControlClient::new(channel.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut i = w as u64;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        client.decide(request(i)).await.unwrap();
                        latencies.push(t.elapsed());
                        i += concurrency as u64;
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for w in workers {
            latencies.extend(w.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                .as_secs_f64()
                * 1000.0
        };
        println!(
            "{:>11} {:>12.0} {:>10.2} {:>10.2} {:>10}",
            concurrency,
            latencies.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            latencies.len()
        );
    }
    let mut v = tonic::Request::new(cpis_proto::gateway::VerifyAuditLogRequest::default());
    platform::principal::attach(
        v.metadata_mut(),
        &Principal {
            activities: vec!["CPIS_AUDIT".into()],
            ..admin.clone()
        },
    );
    let started = Instant::now();
    let verified = client.verify_audit_log(v).await.unwrap().into_inner();
    println!(
        "VerifyAuditLog: ok={} over {} records in {:.2} s",
        verified.ok,
        verified.records_checked,
        started.elapsed().as_secs_f64()
    );
    trigger.fire();
    let _ = running.wait().await;
}
