//! `cpis-bench abuse`: the figures `docs/abuse.md` quotes, taken on the production
//! configuration (three backends with mTLS on PostgreSQL, flag-service on Redis, the gateway
//! serving TLS, every process separate) with its default limits:
//!
//! - peak memory (VmHWM) of the gateway, flag-service and `cpis upload` for a 50,000-record
//!   upload whose fields are all at their maxima, once accepted and once refused record by
//!   record (each service restarted first, so its peak is this upload's);
//! - CPU at rest and lookup latency before and after 5,000 watches opened and abandoned;
//! - lookups answered while 2,000 token-less calls are held open (headers sent, no body).
//!
//! The tests in `tests/tests/abuse.rs` show each bound holding with limits set low; this
//! measures what the bounds cost and leave at their defaults.

use crate::cpu;
use crate::load::{self, Measured, Spec};
use anyhow::{Context, Result, bail};
use clap::Args;
use cpis_proto::gateway as pb;
use cpis_tests::metrics::{scrape, value};
use cpis_tests::system::{Options, System};
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use platform::domain::NhsNumber;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Args, Debug, Clone)]
pub struct AbuseArgs {
    #[command(flatten)]
    servers: crate::Servers,
    /// Names of the bench's databases start with this (recreated by every run).
    #[arg(long, default_value = "cpis_bench_abuse")]
    db_prefix: String,
    /// The CSV files and the services' logs.
    #[arg(long, default_value = "target/cpis-bench/abuse")]
    work_dir: PathBuf,
    /// Records in each upload.
    #[arg(long, default_value_t = 50_000)]
    records: usize,
    /// Watches opened and abandoned.
    #[arg(long, default_value_t = 5_000)]
    watches: u64,
    /// Token-less calls held open while lookups are measured.
    #[arg(long, default_value_t = 2_000)]
    held: usize,
    /// Local authorities the watches are spread over (each may hold 8 at once by default).
    #[arg(long, default_value_t = 50)]
    las: usize,
    /// Concurrent callers of the lookup measurements.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Timed seconds of each lookup and CPU measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Where the figures go, as markdown (also printed).
    #[arg(long, default_value = "target/cpis-bench/abuse/figures.md")]
    out: PathBuf,
    /// A quick run (CI): sizes and durations scaled down.
    #[arg(long)]
    smoke: bool,
}

impl AbuseArgs {
    fn smoke(mut self) -> Self {
        self.records = self.records.min(2_000);
        self.watches = self.watches.min(200);
        self.held = self.held.min(200);
        self.las = self.las.min(5);
        self.duration = self.duration.min(1.0);
        self
    }
}

const TRUST: &str = "RQX";
/// Children on a protection plan that lookups pick from.
const LOOKED_UP_CHILDREN: usize = 1_000;
const SITE: &str = "RQX01";
/// HTTP/2 streams one connection may carry (the gateway's default).
const STREAMS_PER_CONNECTION: usize = 100;

/// The system under attack, and what the bench needs to call it.
struct Target {
    system: System,
    metrics: SocketAddr,
    channels: Vec<Channel>,
    clinician: String,
    /// One `CPIS_LA_MANAGE` token per local authority, the first owning the looked-up children.
    las: Vec<(String, String)>,
    /// The children lookups pick from, each on the first LA's protection plan: many, so no
    /// child's attendance history grows through a run the way one child's would.
    children: Arc<Vec<NhsNumber>>,
}

pub async fn abuse(args: AbuseArgs) -> Result<()> {
    let args = if args.smoke { args.smoke() } else { args };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let work = std::path::absolute(&args.work_dir)?;
    std::fs::create_dir_all(&work)?;
    let mut target = Arc::new(start(&args).await?);
    let mut out = String::new();
    writeln!(
        out,
        "Measured {} on {} at commit {}: `{command}`; the production configuration with its default limits; lookups are notifying lookups of one of 1,000 flagged children (a different one each time) by {} callers over {} TLS connections, {} s timed after 2 s of warm-up.\n",
        crate::chrono_now(),
        crate::machine(),
        crate::commit(),
        args.concurrency,
        target.channels.len(),
        args.duration
    )?;

    // Watches first: the lookups measured before them are the baseline of both attacks.
    let before = Quiet::measure(&target, &args).await?;
    let watches = abandon_watches(&target, &args).await?;
    let after = Quiet::measure(&target, &args).await?;
    writeln!(
        out,
        "**{} watches opened and abandoned** ({} LAs, 8 at once each: {:.1} s; {} refused TOO_MANY_WATCHES on the way; open watches peaked at {}, back to {} and calls in flight to {} {:.1} s after the last was dropped):\n",
        watches.opened,
        args.las,
        watches.seconds,
        watches.refused,
        watches.peak_open,
        watches.open_after,
        watches.in_flight_after,
        watches.settled_seconds
    )?;
    writeln!(
        out,
        "| | CPU at rest, ms per second (gateway / flag / access / attendance / PostgreSQL) | lookups/s | p50 ms | p99 ms | errors | CPU per lookup, ms (services and PostgreSQL) |\n|---|---|---|---|---|---|---|"
    )?;
    for (label, q) in [("before", &before), ("after", &after)] {
        writeln!(out, "| {label} | {} |", q.row())?;
    }

    // Measured again just before, so the comparison is with the system as it now is.
    let control = load::closed(spec(&args), args.concurrency, target.lookup()).await;
    let held = hold_tokenless_calls(&target, &args).await?;
    writeln!(
        out,
        "\n**{} token-less LookupChild calls held open** (headers sent over {} connections, no body, never ended): {} answered UNAUTHENTICATED at once, {} otherwise; calls in flight while they were held peaked at {}. Lookups meanwhile:\n",
        held.calls,
        held.connections,
        held.unauthenticated,
        held.calls - held.unauthenticated,
        held.peak_in_flight
    )?;
    writeln!(
        out,
        "| | lookups/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|\n| none held | {} |\n| {} held | {} |",
        lookup_cells(&control),
        held.calls,
        lookup_cells(&held.lookups)
    )?;

    writeln!(
        out,
        "\n**{}-record uploads with every field at its maximum** through `cpis upload` (peak resident memory, VmHWM, above the process's resident size just before; gateway and flag-service restarted before each):\n",
        args.records
    )?;
    writeln!(
        out,
        "| upload | CSV | answer | seconds | gateway | flag-service | `cpis upload` (peak) |\n|---|---|---|---|---|---|---|"
    )?;
    for kind in [UploadKind::Accepted, UploadKind::Refused] {
        let u = upload(&mut target, &args, &work, kind).await?;
        writeln!(
            out,
            "| {} | {:.1} MiB | {} | {:.1} | +{:.0} MiB | +{:.0} MiB | {:.0} MiB |",
            kind.label(),
            u.csv_bytes as f64 / MIB,
            u.answer,
            u.seconds,
            u.gateway_mib,
            u.flag_mib,
            u.cli_mib
        )?;
    }
    // The processes first: a database cannot be dropped while they hold connections.
    drop(target);
    for name in ["access", "flag", "attendance"] {
        platform::testing::drop_database(
            &args.servers.postgres,
            &format!("{}_{name}", args.db_prefix),
        )
        .await?;
    }
    println!("\n{out}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

async fn start(args: &AbuseArgs) -> Result<Target> {
    let names = ["access", "flag", "attendance"].map(|s| format!("{}_{s}", args.db_prefix));
    for name in &names {
        platform::testing::recreate_database(&args.servers.postgres, name).await?;
    }
    let metrics_port = cpis_tests::free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let system = System::start_with(
        Options {
            postgres: false,
            public_tls: true,
            database_urls: vec![
                (
                    "access-service",
                    platform::testing::with_database(&args.servers.postgres, &names[0]),
                ),
                (
                    "flag-service",
                    platform::testing::with_database(&args.servers.postgres, &names[1]),
                ),
                (
                    "attendance-service",
                    platform::testing::with_database(&args.servers.postgres, &names[2]),
                ),
            ],
            redis_url: Some(args.servers.redis.clone()),
            ..Options::default()
        },
        move |name| {
            if name == "gateway" {
                vec![(
                    "CPIS_METRICS_LISTEN".to_owned(),
                    format!("127.0.0.1:{metrics_port}"),
                )]
            } else {
                Vec::new()
            }
        },
    )
    .await;
    let channels = crate::targets::channels(system.gateway_addr(), Some(&system.ca.pem), 4)?;
    let las: Vec<(String, String)> = (0..args.las)
        .map(|i| {
            let ods = format!("L{:03}", i + 1);
            let token = system.token(&format!("la.worker{i}"), &ods, "R9000", &["CPIS_LA_MANAGE"]);
            (ods, token)
        })
        .collect();
    let organisations: Vec<_> = las
        .iter()
        .map(|(ods, _)| (ods.as_str(), pb::OrganisationKind::LocalAuthority))
        .chain([(TRUST, pb::OrganisationKind::Health)])
        .collect();
    system.onboard(&organisations).await?;
    let children: Vec<NhsNumber> = (999_100_000..)
        .filter_map(NhsNumber::from_first_nine)
        .take(LOOKED_UP_CHILDREN)
        .collect();
    let records = children
        .iter()
        .map(|child| pb::FlagRecord {
            nhs_number: child.as_str().into(),
            flag_type: pb::FlagType::Cpp.into(),
            start_date: "2024-01-01".into(),
            emergency_phone: "01632 960100".into(),
            ..Default::default()
        })
        .collect();
    let request = pb::UploadFlagsRequest {
        upload_id: format!("bench-abuse-{}", uuid::Uuid::new_v4()),
        records,
    };
    let report = LocalAuthorityClient::new(channels[0].clone())
        .upload_flags(with_token(tokio_stream::iter([request]), &las[0].1)?)
        .await?
        .into_inner();
    if report.accepted as usize != LOOKED_UP_CHILDREN {
        bail!(
            "the looked-up children's flags were not all accepted: {} of {LOOKED_UP_CHILDREN}",
            report.accepted
        );
    }
    Ok(Target {
        clinician: system.token("dr.bench", TRUST, "R8000", &["B0107"]),
        metrics,
        channels,
        las,
        children: Arc::new(children),
        system,
    })
}

fn with_token<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

impl Target {
    async fn gauge(&self, name: &str) -> f64 {
        value(
            &scrape(self.metrics).await,
            name,
            &[("component", "gateway")],
        )
    }

    /// A notifying lookup of one of the flagged children; anything but `flagged` is an error.
    fn lookup(
        self: &Arc<Self>,
    ) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = load::Outcome> + Send>>
    + Send
    + Sync
    + 'static {
        let clients: Vec<_> = self
            .channels
            .iter()
            .map(|c| ChildProtectionClient::new(c.clone()))
            .collect();
        let token: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            match format!("Bearer {}", self.clinician).parse() {
                Ok(t) => t,
                Err(_) => tonic::metadata::MetadataValue::from_static(""),
            };
        let children = self.children.clone();
        move |caller, n| {
            let mut pick = platform::synthetic::SplitMix64(((caller as u64) << 40) ^ n);
            let child = children[pick.below(children.len() as u64) as usize].as_str();
            let mut client = clients[caller % clients.len()].clone();
            let mut request = tonic::Request::new(pb::LookupChildRequest {
                nhs_number: child.to_owned(),
                access_kind: pb::AccessKind::Unscheduled.into(),
                setting: Some(pb::Setting {
                    ods_code: SITE.into(),
                    setting_type: pb::SettingType::EmergencyDepartment.into(),
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            request.set_timeout(Duration::from_secs(10));
            Box::pin(async move {
                match client.lookup_child(request).await {
                    Ok(r) if r.get_ref().flagged => Ok(()),
                    Ok(_) => Err("WrongAnswer".to_owned()),
                    Err(status) => Err(format!("{:?}", status.code())),
                }
            })
        }
    }
}

fn spec(args: &AbuseArgs) -> Spec {
    Spec {
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs_f64(args.duration),
    }
}

/// The system at rest, then under lookups.
struct Quiet {
    /// ms of CPU per second of rest, per process.
    rest: std::collections::BTreeMap<String, f64>,
    lookups: Measured,
    /// ms of CPU per lookup, per process.
    per_lookup: std::collections::BTreeMap<String, f64>,
}

const SERVICES: [&str; 5] = [
    "gateway",
    "flag-service",
    "access-service",
    "attendance-service",
    "postgres",
];

impl Quiet {
    async fn measure(target: &Arc<Target>, args: &AbuseArgs) -> Result<Quiet> {
        let watch = crate::production_processes(&target.system);
        let duration = Duration::from_secs_f64(args.duration);
        let rest = cpu::window(watch.clone(), Duration::from_secs(1), duration)
            .await
            .into_iter()
            .map(|(name, ms)| (name, ms / duration.as_secs_f64()))
            .collect();
        let spec = spec(args);
        let cpu = tokio::spawn(cpu::window(watch, spec.warmup, spec.duration));
        let lookups = load::closed(spec, args.concurrency, target.lookup()).await;
        let calls = lookups.calls.max(1) as f64;
        let per_lookup = cpu
            .await?
            .into_iter()
            .map(|(name, ms)| (name, ms / calls))
            .collect();
        Ok(Quiet {
            rest,
            lookups,
            per_lookup,
        })
    }

    fn row(&self) -> String {
        let rest: Vec<String> = SERVICES
            .iter()
            .map(|s| format!("{:.1}", self.rest.get(*s).copied().unwrap_or(0.0)))
            .collect();
        let per_lookup: f64 = SERVICES
            .iter()
            .map(|s| self.per_lookup.get(*s).copied().unwrap_or(0.0))
            .sum();
        format!(
            "{} | {} | {per_lookup:.2}",
            rest.join(" / "),
            lookup_cells(&self.lookups)
        )
    }
}

fn lookup_cells(m: &Measured) -> String {
    format!(
        "{:.0} | {:.1} | {:.1} | {}",
        m.throughput,
        m.p50_ms,
        m.p99_ms,
        if m.errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", m.errors)
        }
    )
}

/// The highest reading of one of the gateway's gauges, sampled every 50 ms until `end`.
struct Peak {
    done: Arc<std::sync::atomic::AtomicBool>,
    sampler: tokio::task::JoinHandle<f64>,
}

impl Peak {
    fn watch(target: &Arc<Target>, gauge: &'static str) -> Peak {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (target, stop) = (target.clone(), done.clone());
        let sampler = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(target.gauge(gauge).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Peak { done, sampler }
    }

    async fn end(self) -> Result<f64> {
        self.done.store(true, Ordering::Relaxed);
        Ok(self.sampler.await?)
    }
}

struct Abandoned {
    opened: u64,
    refused: u64,
    seconds: f64,
    peak_open: f64,
    open_after: f64,
    in_flight_after: f64,
    settled_seconds: f64,
}

/// Opens `args.watches` watches, eight at a time per LA, each dropped (the caller cancels) as
/// soon as the gateway admitted it.
async fn abandon_watches(target: &Arc<Target>, args: &AbuseArgs) -> Result<Abandoned> {
    let opened = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let peak = Peak::watch(target, "cpis_open_watches");
    let mut tasks = Vec::new();
    for (i, (_, token)) in target.las.iter().enumerate() {
        for j in 0..8 {
            let channel = target.channels[(i * 8 + j) % target.channels.len()].clone();
            let (token, opened, refused) = (token.clone(), opened.clone(), refused.clone());
            let total = args.watches;
            tasks.push(tokio::spawn(async move {
                let mut client = LocalAuthorityClient::new(channel);
                loop {
                    // Claim one of the watches still to open.
                    if opened.fetch_add(1, Ordering::Relaxed) >= total {
                        opened.fetch_sub(1, Ordering::Relaxed);
                        return Ok::<_, anyhow::Error>(());
                    }
                    let request = pb::WatchNotificationsRequest {
                        after_cursor: 0,
                        from_start: true,
                    };
                    match client
                        .watch_notifications(with_token(request, &token)?)
                        .await
                    {
                        // Dropped at once: the caller cancels its stream.
                        Ok(stream) => drop(stream),
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            opened.fetch_sub(1, Ordering::Relaxed);
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(s) => bail!("a watch failed: {s:?}"),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let dropped = Instant::now();
    let mut settled_seconds = f64::NAN;
    for _ in 0..600 {
        if target.gauge("cpis_open_watches").await == 0.0
            && target.gauge("cpis_calls_in_flight").await == 0.0
        {
            settled_seconds = dropped.elapsed().as_secs_f64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Abandoned {
        opened: opened.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        seconds,
        peak_open: peak.end().await?,
        open_after: target.gauge("cpis_open_watches").await,
        in_flight_after: target.gauge("cpis_calls_in_flight").await,
        settled_seconds,
    })
}

struct Held {
    calls: usize,
    connections: usize,
    unauthenticated: usize,
    peak_in_flight: f64,
    lookups: Measured,
}

/// One LookupChild call's request body, never sent and never ended while this is held.
type HeldBody =
    tokio::sync::mpsc::Sender<Result<http_body::Frame<tonic::codegen::Bytes>, tonic::Status>>;

/// Holds `args.held` token-less LookupChild calls (headers sent, body never) over connections
/// of their own, and measures lookups meanwhile.
async fn hold_tokenless_calls(target: &Arc<Target>, args: &AbuseArgs) -> Result<Held> {
    let connections = args.held.div_ceil(STREAMS_PER_CONNECTION);
    let port = target.system.gateway_addr().port();
    let channels = crate::targets::channels(
        target.system.gateway_addr(),
        Some(&target.system.ca.pem),
        connections,
    )?;
    let mut held: Vec<(HeldBody, Option<String>)> = Vec::with_capacity(args.held);
    for i in 0..args.held {
        held.push(headers_only(channels[i % connections].clone(), port).await?);
    }
    let unauthenticated = held
        .iter()
        .filter(|(_, status)| status.as_deref() == Some("16"))
        .count();
    let peak = Peak::watch(target, "cpis_calls_in_flight");
    let lookups = load::closed(spec(args), args.concurrency, target.lookup()).await;
    let peak_in_flight = peak.end().await?;
    // Held to here: the connections and every request body stay open through the lookups.
    drop(held);
    drop(channels);
    Ok(Held {
        calls: args.held,
        connections,
        unauthenticated,
        peak_in_flight,
        lookups,
    })
}

/// A LookupChild call over `channel` sending headers without a token and never a body;
/// returns its body's sender (to hold it open) and the gateway's grpc-status.
async fn headers_only(channel: Channel, port: u16) -> Result<(HeldBody, Option<String>)> {
    use http_body_util::StreamBody;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let body = tonic::body::Body::new(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{port}/cpis.gateway.v1.ChildProtection/LookupChild"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)?;
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        tower::ServiceExt::oneshot(channel, request),
    )
    .await
    .context("a call without a token was not answered within 10 s")??;
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((tx, status))
}

#[derive(Clone, Copy)]
enum UploadKind {
    /// Valid records, every field at the longest value it accepts.
    Accepted,
    /// Records refused one by one, every field at its byte maximum.
    Refused,
}

impl UploadKind {
    fn label(self) -> &'static str {
        match self {
            UploadKind::Accepted => "all accepted",
            UploadKind::Refused => "all refused",
        }
    }

    /// Record `i` as a CSV line.
    fn line(self, i: usize) -> Option<String> {
        // local 64 + "@" + domain 189: 254 bytes, the most an address may have.
        let email = format!(
            "{}@{}.{}.{}",
            "l".repeat(64),
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(61)
        );
        match self {
            UploadKind::Accepted => {
                // 15 digits with spaces between: 32 bytes, the most a phone number may have.
                let phone = "+44 1 6 3 2 9 6 0 1 0 0 1 2    3";
                let nhs = NhsNumber::from_first_nine(999_200_000 + i as u32)?;
                Some(format!(
                    "{},cpp,2024-01-01,,,{phone},{phone},{email}",
                    nhs.as_str()
                ))
            }
            // A 32-byte number that is no NHS number, 32-byte phones that are no numbers.
            UploadKind::Refused => Some(format!(
                "{:<32},ucpp,2025-01-01,2025-02-01,2025-09-01,{:<32},0207-364-4079/0207-364-4080 ext9,{email}",
                format!("943 476 {:04}", i % 10_000),
                "+44 20 7364 4079"
            )),
        }
    }
}

struct Uploaded {
    csv_bytes: u64,
    answer: String,
    seconds: f64,
    gateway_mib: f64,
    flag_mib: f64,
    cli_mib: f64,
}

/// `key` (`VmRSS`, `VmHWM`) of process `pid`, in bytes.
fn memory(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn upload(
    target: &mut Arc<Target>,
    args: &AbuseArgs,
    work: &Path,
    kind: UploadKind,
) -> Result<Uploaded> {
    let csv = work.join(format!("upload-{}.csv", kind.label().replace(' ', "-")));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        writeln!(
            file,
            "nhs_number,flag_type,start_date,end_date,due_date,emergency_phone,office_hours_phone,email"
        )?;
        let mut written = 0;
        let mut i = 0;
        while written < args.records {
            if let Some(line) = kind.line(i) {
                writeln!(file, "{line}")?;
                written += 1;
            }
            i += 1;
        }
        file.flush()?;
    }
    let csv_bytes = std::fs::metadata(&csv)?.len();
    {
        let target = Arc::get_mut(target).context("the target is still shared")?;
        target.system.restart("flag-service").await;
        target.system.restart("gateway").await;
    }
    // Connections to the restarted gateway are made again on first use.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (gateway, flag) = (
        target.system.pid("gateway"),
        target.system.pid("flag-service"),
    );
    let base = |pid| memory(pid, "VmRSS").context("no /proc status");
    let (gateway_base, flag_base) = (base(gateway)?, base(flag)?);
    let token = &target.las[1].1;
    let stdout = std::fs::File::create(work.join(format!("{}.out", kind.label())))?;
    let started = Instant::now();
    let mut cli = std::process::Command::new(cpis_tests::binary("cpis"))
        .args([
            "upload".as_ref(),
            csv.as_os_str(),
            "--gateway".as_ref(),
            format!("https://localhost:{}", target.system.gateway_addr().port()).as_ref(),
            "--ca-cert".as_ref(),
            target.system.data_dir().join("internal-ca.pem").as_os_str(),
            "--deadline".as_ref(),
            "600s".as_ref(),
        ])
        .env("CPIS_TOKEN", token)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // VmHWM only grows, so the last reading before the command exits is its peak (to the
    // 5 ms between readings).
    let mut cli_peak = 0;
    let status = loop {
        if let Some(hwm) = memory(cli.id(), "VmHWM") {
            cli_peak = cli_peak.max(hwm);
        }
        if let Some(status) = cli.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut stderr = String::new();
    if let Some(mut e) = cli.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut stderr)?;
    }
    let answer = match kind {
        UploadKind::Accepted if status.success() => format!("{} accepted", args.records),
        UploadKind::Refused
            if stderr.contains(&format!("{} of {}", args.records, args.records)) =>
        {
            format!("{} rejected", args.records)
        }
        _ => bail!("cpis upload ({}) ended {status}: {stderr}", kind.label()),
    };
    let peak = |pid, base: u64| -> Result<f64> {
        let hwm = memory(pid, "VmHWM").context("no /proc status")?;
        Ok(hwm.saturating_sub(base) as f64 / MIB)
    };
    Ok(Uploaded {
        csv_bytes,
        answer,
        seconds,
        gateway_mib: peak(gateway, gateway_base)?,
        flag_mib: peak(flag, flag_base)?,
        cli_mib: cli_peak as f64 / MIB,
    })
}
