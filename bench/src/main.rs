//! cpis-bench: LookupChild measured beside the practical limit of this machine, a bare tonic
//! unary echo, with the same client settings. It loads a national dataset into PostgreSQL
//! (reused by later runs), starts each target as separate processes, drives closed loops at
//! several concurrencies and open loops at a fixed rate, checks every answer, and writes
//! `benchmarks.json`, `benchmarks.md` and `benchmarks.svg`.
//!
//! ```text
//! cargo build --release --bins && target/release/cpis-bench run
//! ```

mod dataset;
mod echo;
mod load;
mod report;
mod targets;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use cpis_tests::certs::Ca;
use cpis_tests::system::{Options, System};
use load::{Measured, Spec};
use report::{DEV, ECHO, Load, PRODUCTION, Report, Row};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "cpis-bench",
    about = "LookupChild beside a bare tonic echo, on a national dataset"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the dataset (unless already loaded) and measure every target.
    Run(RunArgs),
    /// The echo server the run starts (a process of its own, like every target).
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// A PostgreSQL server (any database on it); the bench creates its own databases there.
    #[arg(
        long,
        env = "CPIS_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// Redis for flag-service's shared cache.
    #[arg(
        long,
        env = "CPIS_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// Names of the bench's databases start with this.
    #[arg(long, default_value = "cpis_bench")]
    db_prefix: String,
    /// Logs, certificates and `cpis dev`'s data directory (kept for reuse).
    #[arg(long, default_value = "target/cpis-bench")]
    work_dir: PathBuf,
    /// Where benchmarks.{json,md,svg} go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    #[arg(long, default_value_t = 152)]
    las: usize,
    #[arg(long, default_value_t = 140)]
    trusts: usize,
    #[arg(long, default_value_t = 150_000)]
    flags: usize,
    /// Rows in the attendance log the lookups run against.
    #[arg(long, default_value_t = 10_000_000)]
    attendances: u64,
    /// The small log the large one is compared with.
    #[arg(long, default_value_t = 10_000)]
    small_attendances: u64,
    /// Rows in `cpis dev`'s (SQLite) log.
    #[arg(long, default_value_t = 10_000_000)]
    dev_attendances: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of lookups that are of a flagged child.
    #[arg(long, default_value_t = 1.0)]
    flagged_percent: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the callers share, for every target alike.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Untimed seconds before each measurement.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Timed seconds of each measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The fixed rate (calls a second) of the open-loop measurements.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Load the dataset again even when a loaded one is found.
    #[arg(long)]
    reload: bool,
    /// Drop the bench's databases afterwards.
    #[arg(long)]
    drop_after: bool,
    /// Skip `cpis dev`.
    #[arg(long)]
    no_dev: bool,
    /// A quick run on a tiny dataset (CI): sizes and durations scaled down.
    #[arg(long)]
    smoke: bool,
}

impl RunArgs {
    fn smoke(mut self) -> Self {
        self.flags = self.flags.min(3_000);
        self.trusts = self.trusts.min(10);
        self.attendances = self.attendances.min(20_000);
        self.small_attendances = self.small_attendances.min(2_000);
        self.dev_attendances = self.dev_attendances.min(20_000);
        self.concurrency = vec![1, 8];
        self.warmup = self.warmup.min(0.3);
        self.duration = self.duration.min(1.0);
        self.rate = self.rate.min(100.0);
        self.flagged_percent = 20.0;
        self
    }

    fn spec(&self) -> Spec {
        Spec {
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
        }
    }

    fn sizes(&self) -> dataset::Sizes {
        dataset::Sizes {
            las: self.las,
            trusts: self.trusts,
            flags: self.flags,
            seed: self.seed,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::EchoServer {
                listen,
                tls_cert,
                tls_key,
            } => {
                let tls = match (tls_cert, tls_key) {
                    (Some(c), Some(k)) => {
                        Some((std::fs::read_to_string(c)?, std::fs::read_to_string(k)?))
                    }
                    _ => None,
                };
                echo::serve(listen, tls).await
            }
            Command::Run(args) => {
                let args = if args.smoke { args.smoke() } else { args };
                run(args).await
            }
        }
    })
}

/// The timed part so far, for the report (loading is not counted).
struct Clock(Duration);

async fn measure<F, Fut>(
    clock: &mut Clock,
    args: &RunArgs,
    what: &str,
    load: Load,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = load::Outcome> + Send + 'static,
{
    let started = Instant::now();
    let spec = args.spec();
    let measured = match load {
        Load::Closed { concurrency } => load::closed(spec, concurrency, call).await,
        Load::Open { rate } => load::open(spec, rate, 4096, call).await,
    };
    clock.0 += started.elapsed();
    println!(
        "{what:<34} {:>8} {:>9.0}/s p50 {:>7.2} p90 {:>7.2} p99 {:>7.2} max {:>8.1} ms errors {:?}",
        match load {
            Load::Closed { concurrency } => format!("c={concurrency}"),
            Load::Open { rate } => format!("{rate:.0}/s"),
        },
        measured.throughput,
        measured.p50_ms,
        measured.p90_ms,
        measured.p99_ms,
        measured.max_ms,
        measured.errors
    );
    measured
}

async fn run(args: RunArgs) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let work = std::path::absolute(&args.work_dir)?;
    std::fs::create_dir_all(&work)?;
    let mut clock = Clock(Duration::ZERO);
    let mut rows = Vec::new();
    let dataset = dataset::generate(args.sizes());
    let now = chrono::Utc::now();
    let mut loading = serde_json::Map::new();

    // (a) the practical limit, in plaintext and (for reference) over TLS.
    let ca = Ca::new("cpis-bench CA");
    let echo_identity = ca.server(&work, "echo");
    for tls in [false, true] {
        let port = cpis_tests::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server_args = vec![
            "echo-server".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
        ];
        if tls {
            server_args.extend([
                "--tls-cert".to_owned(),
                echo_identity.cert.display().to_string(),
                "--tls-key".to_owned(),
                echo_identity.key.display().to_string(),
            ]);
        }
        let _server = targets::spawn(
            &std::env::current_exe()?,
            &server_args,
            &work.join("echo.log"),
        )?;
        let ca_pem = tls.then_some(ca.pem.as_str());
        targets::wait_serving(addr, ca_pem).await?;
        let channels = Arc::new(targets::channels(addr, ca_pem, args.connections)?);
        let (target, workload) = if tls {
            ("echo over TLS", "echo")
        } else {
            (ECHO, "echo")
        };
        for &c in &args.concurrency {
            let load = Load::Closed { concurrency: c };
            let m = measure(
                &mut clock,
                &args,
                target,
                load,
                targets::echo_call(channels.clone()),
            )
            .await;
            rows.push(row(target, workload, None, load, m));
        }
    }

    // (b), (c): the production configuration on PostgreSQL and Redis.
    let access_db = format!("{}_access", args.db_prefix);
    let flag_db = format!("{}_flag", args.db_prefix);
    let attendance_db = |n: u64| format!("{}_attendance_{n}", args.db_prefix);
    for n in [args.small_attendances, args.attendances] {
        let name = attendance_db(n);
        let label = format!(
            "attendances rows={n} seed={} window={}",
            args.seed,
            dataset::WINDOW_DAYS
        );
        let url = dataset::database_url(&args.postgres, &name);
        if args.reload || dataset::label(&args.postgres, &name).await? != Some(Some(label.clone()))
        {
            println!("loading {n} attendances into {name} (COPY)...");
            dataset::recreate(&args.postgres, &name).await?;
            let seconds = dataset::attendances(&url, n, args.seed, now).await?;
            println!(
                "  {n} rows in {seconds:.1} s ({:.0} rows/s, indexes built after)",
                n as f64 / seconds
            );
            dataset::set_label(&args.postgres, &name, &label).await?;
            loading.insert(name, serde_json::json!({ "rows": n, "seconds": seconds }));
        } else {
            println!("reusing {name} ({label})");
            loading.insert(name, serde_json::json!({ "rows": n, "reused": true }));
        }
    }
    let registry_label = format!("registry {}", serde_json::to_string(&args.sizes())?);
    let registry_loaded = !args.reload
        && dataset::label(&args.postgres, &flag_db).await? == Some(Some(registry_label.clone()))
        && dataset::label(&args.postgres, &access_db).await? == Some(Some(registry_label.clone()));
    if !registry_loaded {
        dataset::recreate(&args.postgres, &flag_db).await?;
        dataset::recreate(&args.postgres, &access_db).await?;
    }
    let urls = |attendances: u64| {
        vec![
            (
                "access-service",
                dataset::database_url(&args.postgres, &access_db),
            ),
            (
                "flag-service",
                dataset::database_url(&args.postgres, &flag_db),
            ),
            (
                "attendance-service",
                dataset::database_url(&args.postgres, &attendance_db(attendances)),
            ),
        ]
    };
    let mut system = System::start(Options {
        postgres: false,
        public_tls: true,
        database_urls: urls(args.attendances),
        redis_url: Some(args.redis.clone()),
    })
    .await;
    let gateway_url = format!("https://localhost:{}", system.gateway_addr().port());
    let ca_path = system.data_dir().join("internal-ca.pem");
    if !registry_loaded {
        println!(
            "loading {} organisations and {} flags through the gateway...",
            args.las + args.trusts,
            args.flags
        );
        let started = Instant::now();
        let gateway = cpis_cli::connect::GatewayArgs {
            gateway: gateway_url.clone(),
            token: None,
            ca_cert: Some(ca_path.clone()),
            client_cert: None,
            client_key: None,
            deadline: Duration::from_secs(120),
        };
        let accepted =
            dataset::organisations_and_flags(&dataset, gateway, &system.data_dir()).await?;
        let seconds = started.elapsed().as_secs_f64();
        println!("  {accepted} flags accepted in {seconds:.1} s");
        dataset::set_label(&args.postgres, &flag_db, &registry_label).await?;
        dataset::set_label(&args.postgres, &access_db, &registry_label).await?;
        loading.insert(
            "registry".into(),
            serde_json::json!({ "flags": accepted, "seconds": seconds }),
        );
    } else {
        println!("reusing {flag_db} and {access_db} ({registry_label})");
    }
    let lookups_for = |n: u64| -> Result<Arc<dataset::Lookups>> {
        Ok(Arc::new(dataset::Lookups::new(
            &dataset,
            &dataset::population(n),
        )?))
    };
    let channels = targets::channels(
        system.gateway_addr(),
        Some(&system.ca.pem),
        args.connections,
    )?;
    let production = |system: &System, notifying: bool, lookups: Arc<dataset::Lookups>| {
        targets::Lookup::new(
            &channels,
            clinicians(&dataset, &system.data_dir(), notifying)?,
            notifying,
            lookups,
            args.flagged_percent,
        )
    };
    let large = lookups_for(args.attendances)?;
    for notifying in [false, true] {
        let workload = workload_name(notifying);
        let lookup = production(&system, notifying, large.clone())?;
        let mut loads: Vec<Load> = args
            .concurrency
            .iter()
            .map(|&c| Load::Closed { concurrency: c })
            .collect();
        loads.push(Load::Open { rate: args.rate });
        for load in loads {
            let l = lookup.clone();
            let m = measure(
                &mut clock,
                &args,
                &format!("production {workload}"),
                load,
                move |c, n| l.clone().call(c, n),
            )
            .await;
            rows.push(row(PRODUCTION, workload, Some(args.attendances), load, m));
        }
    }
    // The same lookups against the small log: only the attendance database differs.
    system.set_env(
        "attendance-service",
        "CPIS_DATABASE_URL",
        &urls(args.small_attendances)[2].1,
    );
    system.restart("attendance-service").await;
    let small = lookups_for(args.small_attendances)?;
    for notifying in [false, true] {
        let workload = workload_name(notifying);
        let lookup = production(&system, notifying, small.clone())?;
        for load in [
            Load::Closed {
                concurrency: 64.min(*args.concurrency.last().unwrap_or(&64)),
            },
            Load::Open { rate: args.rate },
        ] {
            let l = lookup.clone();
            let m = measure(
                &mut clock,
                &args,
                &format!("production {workload} (small log)"),
                load,
                move |c, n| l.clone().call(c, n),
            )
            .await;
            rows.push(row(
                PRODUCTION,
                workload,
                Some(args.small_attendances),
                load,
                m,
            ));
        }
    }
    let postgres_version = postgres_version(&args.postgres).await.unwrap_or_default();
    drop(system);

    // (d) cpis dev: one process, SQLite, its own dataset in the work directory.
    if !args.no_dev {
        let dev_dir = work.join("dev");
        let label = format!(
            "dev {} attendances={}",
            serde_json::to_string(&args.sizes())?,
            args.dev_attendances
        );
        let label_path = dev_dir.join("bench-dataset");
        if args.reload
            || std::fs::read_to_string(&label_path).ok().as_deref() != Some(label.as_str())
        {
            let _ = std::fs::remove_dir_all(&dev_dir);
            std::fs::create_dir_all(&dev_dir)?;
            let started = Instant::now();
            {
                let (_dev, addr) = start_dev(&dev_dir, &work).await?;
                let gateway = cpis_cli::connect::GatewayArgs {
                    gateway: format!("http://{addr}"),
                    token: None,
                    ca_cert: None,
                    client_cert: None,
                    client_key: None,
                    deadline: Duration::from_secs(120),
                };
                dataset::organisations_and_flags(&dataset, gateway, &dev_dir).await?;
            }
            let url = format!(
                "sqlite://{}?mode=rwc",
                dev_dir.join("attendance-service.db").display()
            );
            println!(
                "loading {} attendances into cpis dev's SQLite...",
                args.dev_attendances
            );
            dataset::attendances(&url, args.dev_attendances, args.seed, now).await?;
            std::fs::write(&label_path, &label)?;
            let seconds = started.elapsed().as_secs_f64();
            println!("  loaded in {seconds:.1} s");
            loading.insert(
                "cpis dev".into(),
                serde_json::json!({ "attendances": args.dev_attendances, "seconds": seconds }),
            );
        }
        let (_dev, addr) = start_dev(&dev_dir, &work).await?;
        let channels = targets::channels(addr, None, args.connections)?;
        let lookups = lookups_for(args.dev_attendances)?;
        for notifying in [false, true] {
            let workload = workload_name(notifying);
            let lookup = targets::Lookup::new(
                &channels,
                clinicians(&dataset, &dev_dir, notifying)?,
                notifying,
                lookups.clone(),
                args.flagged_percent,
            )?;
            for &c in &args.concurrency {
                let load = Load::Closed { concurrency: c };
                let l = lookup.clone();
                let m = measure(
                    &mut clock,
                    &args,
                    &format!("cpis dev {workload}"),
                    load,
                    move |c, n| l.clone().call(c, n),
                )
                .await;
                rows.push(row(DEV, workload, Some(args.dev_attendances), load, m));
            }
        }
    }

    let mut report = Report {
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: machine(),
        commit: commit(),
        command,
        postgres: postgres_version,
        settings: format!(
            "{} HTTP/2 connections per target; {} s warm-up then {} s timed per row; open loop at {}/s; {}% of lookups of a flagged child; every answer checked (flagged as expected, attendance available)",
            args.connections, args.warmup, args.duration, args.rate, args.flagged_percent
        ),
        dataset: serde_json::json!({
            "local_authorities": dataset.local_authorities.len(),
            "trusts": dataset.trusts.len(),
            "flags": dataset.local_authorities.iter().map(|l| l.flags.len()).sum::<usize>(),
            "open_flags": dataset.open_flags().count(),
            "attendances": args.attendances,
            "small_attendances": args.small_attendances,
            "dev_attendances": args.dev_attendances,
            "children_in_log": dataset::population(args.attendances).children.len(),
            "loading": loading,
        }),
        rows,
        checks: Vec::new(),
        measured_seconds: clock.0.as_secs_f64(),
    };
    report.fill_ratios();
    report.judge(args.attendances, args.small_attendances, args.rate);
    report.write(&args.out, "benchmarks.svg")?;
    println!();
    for check in &report.checks {
        println!(
            "{} {}: {}",
            if check.met { "MET    " } else { "NOT MET" },
            check.target,
            check.measured
        );
    }
    println!(
        "measured part {:.0} s; wrote {}/benchmarks.{{json,md,svg}}",
        clock.0.as_secs_f64(),
        args.out.display()
    );

    if args.drop_after {
        for name in [
            access_db,
            flag_db,
            attendance_db(args.attendances),
            attendance_db(args.small_attendances),
        ] {
            dataset::drop(&args.postgres, &name).await?;
        }
    }
    Ok(())
}

fn workload_name(notifying: bool) -> &'static str {
    if notifying { "notifying" } else { "silent" }
}

fn row(
    target: &'static str,
    workload: &'static str,
    attendances: Option<u64>,
    load: Load,
    measured: Measured,
) -> Row {
    Row {
        target,
        workload,
        attendances,
        load,
        measured,
        ratio_to_echo: None,
    }
}

/// Up to 64 clinicians, one per trust in turn, with tokens for one kind of lookup signed by
/// the development key in `data_dir`, each at their trust's first site.
fn clinicians(
    dataset: &cpis_cli::demo::Dataset,
    data_dir: &Path,
    notifying: bool,
) -> Result<Vec<(String, String)>> {
    let keys = cpis_cli::devkeys::load(data_dir)?;
    let (_, _, activity) = targets::workload(notifying);
    if dataset.trusts.is_empty() {
        bail!("the dataset has no trusts");
    }
    (0..64)
        .map(|i| {
            let trust = &dataset.trusts[i % dataset.trusts.len()];
            let site = trust.sites.first().context("a trust without a site")?;
            let token = cpis_cli::token::sign(
                &keys,
                &format!("dr.bench{i}"),
                &trust.ods_code,
                "R8000",
                &[activity.to_owned()],
                Duration::from_secs(4 * 3600),
            )?;
            Ok((token, site.ods_code.clone()))
        })
        .collect()
}

/// `cpis dev` on a free port with `dir` as its data directory.
async fn start_dev(dir: &Path, work: &Path) -> Result<(targets::Process, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], cpis_tests::free_port()));
    let process = targets::spawn(
        &cpis_tests::binary("cpis"),
        &[
            "dev".to_owned(),
            "--data-dir".to_owned(),
            dir.display().to_string(),
            "--listen".to_owned(),
            addr.to_string(),
        ],
        &work.join("cpis-dev.log"),
    )?;
    targets::wait_serving(addr, None).await?;
    Ok((process, addr))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1_048_576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {memory}, Linux {}; load generator, services, PostgreSQL and Redis all on this machine",
        kernel.trim()
    )
}

fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{hash} (with uncommitted changes)")
    } else {
        hash
    }
}

async fn postgres_version(url: &str) -> Result<String> {
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(url).await?;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT version() || ', shared_buffers ' || current_setting('shared_buffers') || ', synchronous_commit ' || current_setting('synchronous_commit')",
        ))
        .await?
        .context("no version")?;
    let v: String = row.try_get_by_index(0)?;
    db.close().await?;
    Ok(v)
}
