//! Registry figures: upload throughput for 150,000 flags, and GetFlags latency cached
//! (in-process, and Redis when configured) and uncached, through the real gRPC server.
//!
//! ```text
//! CPIS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! CPIS_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo run --release -p flag-service --example registry_bench
//! ```
//! Without `CPIS_TEST_POSTGRES_URL` it runs on SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cpis_proto::access::Principal;
use cpis_proto::flag::GetFlagsRequest;
use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
use cpis_proto::gateway::{FlagRecord, FlagType, UploadFlagsRequest};
use flag_service::{FlagArgs, FlagService};
use platform::domain::{NhsNumber, to_timestamp};
use platform::runtime::Component;
use platform::shutdown::Shutdown;
use std::time::{Duration, Instant};
use tonic::Request;
use tonic::transport::Channel;

const FLAGS: usize = 150_000;
const PER_UPLOAD: usize = 50_000;
const PER_MESSAGE: usize = 5_000;
const READS: usize = 20_000;

fn numbers(count: usize) -> Vec<String> {
    (999_000_001u32..)
        .filter_map(NhsNumber::from_first_nine)
        .take(count)
        .map(|n| n.as_str().to_owned())
        .collect()
}

fn la(ods: &str) -> Principal {
    Principal {
        user_id: format!("bench-{ods}"),
        ods_code: ods.into(),
        organisation_name: format!("Council {ods}"),
        activities: vec!["CPIS_LA_MANAGE".into()],
        ..Default::default()
    }
}

async fn start(url: &str, cache: &str) -> (FlagRegistryClient<Channel>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FlagArgs::embedded(dir.path().to_path_buf());
    args.serve.database.database_url = Some(url.to_owned());
    args.local_cache = cache == "in-process";
    if cache == "redis" {
        args.serve.redis_url = platform::testing::redis_url();
        args.cache_prefix = format!("cpis-bench:{}", uuid::Uuid::new_v4());
    }
    let (trigger, shutdown) = Shutdown::new();
    std::mem::forget(trigger);
    let running = FlagService::start(args, shutdown).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlagRegistryClient::new(channel);
    // Ready once migrations ran: a read answers instead of UNAVAILABLE.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get_flags(read(&numbers(1)[0])).await.is_err() {
        assert!(Instant::now() < deadline, "registry never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (client, dir)
}

/// A silent read, as the gateway sends it: with a clinician's principal.
fn read(nhs: &str) -> tonic::Request<GetFlagsRequest> {
    let mut request = tonic::Request::new(GetFlagsRequest {
        nhs_numbers: vec![nhs.to_owned()],
        as_of: Some(to_timestamp(chrono::Utc::now())),
        notify: None,
    });
    let clinician = cpis_proto::access::Principal {
        user_id: "bench".into(),
        ods_code: "RQX".into(),
        role_code: "R8000".into(),
        activities: vec!["B0170".into()],
        ..Default::default()
    };
    platform::principal::attach(request.metadata_mut(), &clinician);
    request
}

async fn upload_all(client: &FlagRegistryClient<Channel>, children: &[String]) -> Duration {
    let started = Instant::now();
    for (u, chunk) in children.chunks(PER_UPLOAD).enumerate() {
        let messages: Vec<UploadFlagsRequest> = chunk
            .chunks(PER_MESSAGE)
            .map(|batch| UploadFlagsRequest {
                upload_id: format!("bench-{u}"),
                records: batch
                    .iter()
                    .enumerate()
                    .map(|(i, n)| FlagRecord {
                        nhs_number: n.clone(),
                        flag_type: if i.is_multiple_of(2) {
                            FlagType::Cpp
                        } else {
                            FlagType::Lac
                        }
                        .into(),
                        start_date: "2025-01-01".into(),
                        end_date: String::new(),
                        due_date: String::new(),
                        emergency_phone: "0161 234 5678".into(),
                        office_hours_phone: "0161 234 0000".into(),
                        email: "duty@council.example".into(),
                    })
                    .collect(),
            })
            .collect();
        let mut request = Request::new(tokio_stream::iter(messages));
        platform::principal::attach(request.metadata_mut(), &la(&format!("{}", 700 + u)));
        let report = client
            .clone()
            .upload_flags(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(report.accepted as usize, chunk.len());
    }
    started.elapsed()
}

async fn latency(client: &FlagRegistryClient<Channel>, children: &[String], label: &str) {
    // Nine lookups in ten are of children with no flag, as in life.
    let strangers = &numbers(FLAGS + 10_000)[FLAGS..];
    let pick = |i: usize| {
        if i.is_multiple_of(10) {
            &children[(i * 7919) % children.len()]
        } else {
            &strangers[(i * 104_729) % strangers.len()]
        }
    };
    let mut client = client.clone();
    for i in 0..READS {
        client.get_flags(read(pick(i))).await.unwrap();
    }
    let mut samples = Vec::with_capacity(READS);
    for i in 0..READS {
        let started = Instant::now();
        client.get_flags(read(pick(i))).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "GetFlags {label:<22} {READS} reads: p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    let db = match platform::testing::postgres("bench").await {
        Some(db) => db,
        None => platform::testing::sqlite(),
    };
    println!("database: {}", db.label());
    let children = numbers(FLAGS);

    let (uncached, _a) = start(&db.url, "none").await;
    let took = upload_all(&uncached, &children).await;
    println!(
        "UploadFlags {FLAGS} flags ({} uploads of {PER_UPLOAD}, {PER_MESSAGE} per message): {:.2} s ({:.0} flags/s)",
        FLAGS / PER_UPLOAD,
        took.as_secs_f64(),
        FLAGS as f64 / took.as_secs_f64()
    );
    latency(&uncached, &children, "uncached (database)").await;

    let (local, _b) = start(&db.url, "in-process").await;
    latency(&local, &children, "cached (in-process)").await;

    if platform::testing::redis_url().is_some() {
        let (redis, _c) = start(&db.url, "redis").await;
        latency(&redis, &children, "cached (Redis)").await;
    }
}
