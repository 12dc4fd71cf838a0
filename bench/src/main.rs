//! cpis-bench: LookupChild measured beside the practical limit of this machine, a bare tonic
//! unary echo, with the same client settings. It loads a national dataset into PostgreSQL
//! (reused by later runs), starts each target as separate processes, drives closed loops at
//! several concurrencies and open loops at a fixed rate, checks every answer, and writes
//! `benchmarks.json`, `benchmarks.md` and `benchmarks.svg`.
//!
//! ```text
//! cargo build --release --bins && target/release/cpis-bench run
//! cargo build --release --bins && target/release/cpis-bench abuse
//! ```

mod abuse;
mod cpu;
mod dataset;
mod echo;
mod load;
mod report;
mod targets;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use cpis_tests::certs::Ca;
use cpis_tests::system::{Options, System};
use load::Spec;
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
    Run(Box<RunArgs>),
    /// The figures docs/abuse.md quotes: memory for the largest upload, CPU and latency after
    /// abandoned watches, lookups while token-less calls are held.
    Abuse(Box<abuse::AbuseArgs>),
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

/// The PostgreSQL and Redis a measurement runs against.
#[derive(Args, Debug, Clone)]
struct Servers {
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
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    servers: Servers,
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
    /// Fixed rates (calls a second) of the open-loop measurements on the production
    /// configuration; the first is the one the p99 target is judged at (250/s is ten times
    /// England's peak, docs/capacity.md).
    #[arg(long, value_delimiter = ',', default_value = "1000,250")]
    rates: Vec<f64>,
    /// Load the dataset again even when a loaded one is found.
    #[arg(long)]
    reload: bool,
    /// Drop the bench's databases afterwards.
    #[arg(long)]
    drop_after: bool,
    /// Targets to leave out: echo, production, small-log (the comparison with the small
    /// attendance log), dev.
    #[arg(long, value_delimiter = ',', value_parser = ["echo", "production", "small-log", "dev"])]
    skip: Vec<String>,
    /// A quick run on a tiny dataset (CI): sizes and durations scaled down.
    #[arg(long)]
    smoke: bool,
}

impl RunArgs {
    fn runs(&self, target: &str) -> bool {
        !self.skip.iter().any(|s| s == target)
    }

    fn smoke(mut self) -> Self {
        self.flags = self.flags.min(3_000);
        self.trusts = self.trusts.min(10);
        self.attendances = self.attendances.min(20_000);
        self.small_attendances = self.small_attendances.min(2_000);
        self.dev_attendances = self.dev_attendances.min(20_000);
        self.concurrency = vec![1, 64];
        self.connections = 2;
        self.warmup = self.warmup.min(0.3);
        self.duration = self.duration.min(1.0);
        self.rates = vec![100.0];
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
            Command::Abuse(args) => abuse::abuse(*args).await,
            Command::Run(args) => {
                let args = *args;
                let args = if args.smoke { args.smoke() } else { args };
                run(args).await
            }
        }
    })
}

/// One run: what it measured so far, and the timed part's length (loading not counted).
struct Run {
    args: RunArgs,
    work: PathBuf,
    dataset: cpis_cli::demo::Dataset,
    now: chrono::DateTime<chrono::Utc>,
    rows: Vec<Row>,
    loading: serde_json::Map<String, serde_json::Value>,
    timed: Duration,
    /// The processes whose CPU the next measurements count.
    watch: Vec<(String, cpu::Who)>,
    /// The PostgreSQL server whose WAL the next measurements count.
    wal: Option<String>,
}

impl Run {
    /// Measures `call` under `load` and keeps the row.
    async fn measure<F, Fut>(
        &mut self,
        target: &'static str,
        workload: &'static str,
        attendances: Option<u64>,
        load: Load,
        call: F,
    ) where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = load::Outcome> + Send + 'static,
    {
        let started = Instant::now();
        let spec = self.args.spec();
        let cpu = tokio::spawn(cpu::window(self.watch.clone(), spec.warmup, spec.duration));
        let wal = self
            .wal
            .clone()
            .map(|url| tokio::spawn(wal_window(url, spec.warmup, spec.duration)));
        let measured = match load {
            Load::Closed { concurrency } => load::closed(spec, concurrency, call).await,
            Load::Open { rate } => load::open(spec, rate, 4096, call).await,
        };
        self.timed += started.elapsed();
        let calls = measured.calls.max(1) as f64;
        let cpu_ms_per_call = cpu
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(name, ms)| (name, ms / calls))
            .collect();
        let wal_bytes_per_call = match wal {
            Some(task) => task.await.ok().flatten().map(|b| b / calls),
            None => None,
        };
        let log = attendances.map(|n| format!(" ({n})")).unwrap_or_default();
        println!(
            "{:<42} {:>8} {:>9.0}/s p50 {:>7.2} p90 {:>7.2} p99 {:>7.2} max {:>8.1} ms errors {:?}",
            format!("{target} {workload}{log}"),
            load.label(),
            measured.throughput,
            measured.p50_ms,
            measured.p90_ms,
            measured.p99_ms,
            measured.max_ms,
            measured.errors
        );
        self.rows.push(Row {
            target,
            workload,
            attendances,
            load,
            measured,
            ratio_to_echo: None,
            cpu_ms_per_call,
            wal_bytes_per_call,
        });
    }

    fn closed_loads(&self) -> Vec<Load> {
        self.args
            .concurrency
            .iter()
            .map(|&c| Load::Closed { concurrency: c })
            .collect()
    }

    /// Silent and notifying lookups through `channels` under each of `loads`.
    async fn lookups_under(
        &mut self,
        target: &'static str,
        channels: &[tonic::transport::Channel],
        data_dir: &Path,
        attendances: u64,
        loads: &[Load],
    ) -> Result<()> {
        let lookups = Arc::new(dataset::Lookups::new(
            &self.dataset,
            &dataset::population(attendances),
        )?);
        for notifying in [false, true] {
            let lookup = targets::Lookup::new(
                channels,
                clinicians(&self.dataset, data_dir, notifying)?,
                notifying,
                lookups.clone(),
                self.args.flagged_percent,
            )?;
            for &load in loads {
                let l = lookup.clone();
                let call = move |c, n| l.clone().call(c, n);
                self.measure(
                    target,
                    workload_name(notifying),
                    Some(attendances),
                    load,
                    call,
                )
                .await;
            }
        }
        Ok(())
    }

    /// (a) The practical limit: the echo in plaintext and, for reference, over TLS.
    async fn echo(&mut self) -> Result<()> {
        let ca = Ca::new("cpis-bench CA");
        let identity = ca.server(&self.work, "echo");
        for tls in [false, true] {
            let addr = SocketAddr::from(([127, 0, 0, 1], cpis_tests::free_port()));
            let mut server_args = vec![
                "echo-server".to_owned(),
                "--listen".to_owned(),
                addr.to_string(),
            ];
            if tls {
                server_args.extend([
                    "--tls-cert".to_owned(),
                    identity.cert.display().to_string(),
                    "--tls-key".to_owned(),
                    identity.key.display().to_string(),
                ]);
            }
            let server = targets::spawn(
                &std::env::current_exe()?,
                &server_args,
                &self.work.join("echo.log"),
            )?;
            self.watch = vec![
                ("echo server".into(), cpu::Who::Pid(server.0.id())),
                (LOAD_GENERATOR.into(), cpu::Who::Pid(std::process::id())),
            ];
            let ca_pem = tls.then_some(ca.pem.as_str());
            targets::wait_serving(addr, ca_pem).await?;
            let channels = Arc::new(targets::channels(addr, ca_pem, self.args.connections)?);
            let target = if tls { "echo over TLS" } else { ECHO };
            for load in self.closed_loads() {
                self.measure(
                    target,
                    "echo",
                    None,
                    load,
                    targets::echo_call(channels.clone()),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Makes sure the attendance database `name` holds `rows` rows; returns its URL.
    async fn attendance_database(&mut self, name: &str, rows: u64) -> Result<String> {
        let args = &self.args;
        let label = format!(
            "attendances rows={rows} seed={} window={}",
            args.seed,
            dataset::WINDOW_DAYS
        );
        let url = platform::testing::with_database(&args.servers.postgres, name);
        if !args.reload
            && dataset::label(&args.servers.postgres, name).await? == Some(Some(label.clone()))
        {
            println!("reusing {name} ({label})");
            self.loading.insert(
                name.to_owned(),
                serde_json::json!({ "rows": rows, "reused": true }),
            );
            return Ok(url);
        }
        println!("loading {rows} attendances into {name} (COPY)...");
        platform::testing::recreate_database(&args.servers.postgres, name).await?;
        let seconds = dataset::attendances(&url, rows, args.seed, self.now).await?;
        println!(
            "  {rows} rows in {seconds:.1} s ({:.0} rows/s, indexes built after)",
            rows as f64 / seconds
        );
        dataset::set_label(&args.servers.postgres, name, &label).await?;
        self.loading.insert(
            name.to_owned(),
            serde_json::json!({ "rows": rows, "seconds": seconds }),
        );
        Ok(url)
    }

    /// (b), (c): the production configuration, on PostgreSQL and Redis.
    async fn production(&mut self) -> Result<()> {
        let prefix = self.args.db_prefix.clone();
        let postgres = self.args.servers.postgres.clone();
        let (access_db, flag_db) = (format!("{prefix}_access"), format!("{prefix}_flag"));
        let (large, small) = (self.args.attendances, self.args.small_attendances);
        let large_url = self
            .attendance_database(&format!("{prefix}_attendance_{large}"), large)
            .await?;
        let small_url = self
            .attendance_database(&format!("{prefix}_attendance_{small}"), small)
            .await?;

        let label = format!("registry {}", serde_json::to_string(&self.args.sizes())?);
        let loaded = !self.args.reload
            && dataset::label(&postgres, &flag_db).await? == Some(Some(label.clone()))
            && dataset::label(&postgres, &access_db).await? == Some(Some(label.clone()));
        if !loaded {
            platform::testing::recreate_database(&postgres, &flag_db).await?;
            platform::testing::recreate_database(&postgres, &access_db).await?;
        }
        let mut system = System::start(Options {
            postgres: false,
            public_tls: true,
            database_urls: vec![
                (
                    "access-service",
                    platform::testing::with_database(&postgres, &access_db),
                ),
                (
                    "flag-service",
                    platform::testing::with_database(&postgres, &flag_db),
                ),
                ("attendance-service", large_url),
            ],
            redis_url: Some(self.args.servers.redis.clone()),
            ..Options::default()
        })
        .await;
        if loaded {
            println!("reusing {flag_db} and {access_db} ({label})");
        } else {
            println!("loading organisations and flags through the gateway...");
            let started = Instant::now();
            let gateway = cpis_cli::connect::GatewayArgs {
                gateway: format!("https://localhost:{}", system.gateway_addr().port()),
                token: None,
                ca_cert: Some(system.data_dir().join("internal-ca.pem")),
                client_cert: None,
                client_key: None,
                deadline: Duration::from_secs(120),
            };
            let accepted =
                dataset::organisations_and_flags(&self.dataset, gateway, &system.data_dir())
                    .await?;
            let seconds = started.elapsed().as_secs_f64();
            println!("  {accepted} flags accepted in {seconds:.1} s");
            dataset::set_label(&postgres, &flag_db, &label).await?;
            dataset::set_label(&postgres, &access_db, &label).await?;
            self.loading.insert(
                "registry".into(),
                serde_json::json!({ "flags": accepted, "seconds": seconds }),
            );
        }

        let channels = targets::channels(
            system.gateway_addr(),
            Some(&system.ca.pem),
            self.args.connections,
        )?;
        self.watch = production_processes(&system);
        self.wal = Some(postgres.clone());
        let mut loads = self.closed_loads();
        loads.extend(self.args.rates.iter().map(|&rate| Load::Open { rate }));
        self.lookups_under(PRODUCTION, &channels, &system.data_dir(), large, &loads)
            .await?;

        // The same lookups against the small log: only the attendance database differs.
        if self.args.runs("small-log") {
            system.set_env("attendance-service", "CPIS_DATABASE_URL", &small_url);
            system.restart("attendance-service").await;
            self.watch = production_processes(&system);
            let loads = [
                Load::Closed { concurrency: 1 },
                Load::Closed { concurrency: 64 },
            ];
            self.lookups_under(PRODUCTION, &channels, &system.data_dir(), small, &loads)
                .await?;
        }
        self.wal = None;
        Ok(())
    }

    /// (d) `cpis dev`: one process on SQLite, its dataset kept in the work directory.
    async fn dev(&mut self) -> Result<()> {
        let dir = self.work.join("dev");
        let rows = self.args.dev_attendances;
        let label = format!(
            "dev {} attendances={rows}",
            serde_json::to_string(&self.args.sizes())?
        );
        let label_path = dir.join("bench-dataset");
        if self.args.reload
            || std::fs::read_to_string(&label_path).ok().as_deref() != Some(label.as_str())
        {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let started = Instant::now();
            {
                let (_dev, addr) = start_dev(&dir, &self.work).await?;
                let gateway = cpis_cli::connect::GatewayArgs {
                    gateway: format!("http://{addr}"),
                    token: None,
                    ca_cert: None,
                    client_cert: None,
                    client_key: None,
                    deadline: Duration::from_secs(120),
                };
                dataset::organisations_and_flags(&self.dataset, gateway, &dir).await?;
            }
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.join("attendance-service.db").display()
            );
            println!("loading {rows} attendances into cpis dev's SQLite...");
            dataset::attendances(&url, rows, self.args.seed, self.now).await?;
            std::fs::write(&label_path, &label)?;
            let seconds = started.elapsed().as_secs_f64();
            println!("  loaded in {seconds:.1} s");
            self.loading.insert(
                "cpis dev".into(),
                serde_json::json!({ "attendances": rows, "seconds": seconds }),
            );
        }
        let (dev, addr) = start_dev(&dir, &self.work).await?;
        self.watch = vec![
            ("cpis dev".into(), cpu::Who::Pid(dev.0.id())),
            (LOAD_GENERATOR.into(), cpu::Who::Pid(std::process::id())),
        ];
        let channels = targets::channels(addr, None, self.args.connections)?;
        let loads = self.closed_loads();
        self.lookups_under(DEV, &channels, &dir, rows, &loads).await
    }

    /// The PostgreSQL databases this run's prefix names.
    fn databases(&self) -> Vec<String> {
        let p = &self.args.db_prefix;
        vec![
            format!("{p}_access"),
            format!("{p}_flag"),
            format!("{p}_attendance_{}", self.args.attendances),
            format!("{p}_attendance_{}", self.args.small_attendances),
        ]
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let work = std::path::absolute(&args.work_dir)?;
    std::fs::create_dir_all(&work)?;
    let postgres_version = postgres_version(&args.servers.postgres)
        .await
        .unwrap_or_default();
    let mut run = Run {
        dataset: dataset::generate(args.sizes()),
        args,
        work,
        now: chrono::Utc::now(),
        rows: Vec::new(),
        loading: serde_json::Map::new(),
        timed: Duration::ZERO,
        watch: Vec::new(),
        wal: None,
    };
    if run.args.runs("echo") {
        run.echo().await?;
    }
    if run.args.runs("production") {
        run.production().await?;
    }
    if run.args.runs("dev") {
        run.dev().await?;
    }

    let args = &run.args;
    let dataset = &run.dataset;
    let mut report = Report {
        generated_at: chrono_now(),
        machine: machine(),
        commit: commit(),
        command,
        postgres: postgres_version,
        settings: format!(
            "{} HTTP/2 connections per target; {} s warm-up then {} s timed per row; open loops at {}; {}% of lookups of a flagged child; every answer checked (flagged as expected, attendance available)",
            args.connections,
            args.warmup,
            args.duration,
            args.rates
                .iter()
                .map(|r| format!("{r:.0}/s"))
                .collect::<Vec<_>>()
                .join(" and "),
            args.flagged_percent
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
            "loading": run.loading,
        }),
        rows: run.rows.clone(),
        checks: Vec::new(),
        measured_seconds: run.timed.as_secs_f64(),
    };
    report.fill_ratios();
    report.judge(
        args.attendances,
        args.small_attendances,
        args.rates.first().copied().unwrap_or(1000.0),
    );
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
        report.measured_seconds,
        args.out.display()
    );
    if args.drop_after {
        for name in run.databases() {
            platform::testing::drop_database(&args.servers.postgres, &name).await?;
        }
    }
    Ok(())
}

const LOAD_GENERATOR: &str = "load generator";

/// The production configuration's processes: four services, PostgreSQL's backends, Redis
/// and the load generator.
fn production_processes(system: &System) -> Vec<(String, cpu::Who)> {
    let mut watch: Vec<(String, cpu::Who)> = [
        "gateway",
        "access-service",
        "flag-service",
        "attendance-service",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), cpu::Who::Pid(system.pid(name))))
    .collect();
    watch.push(("postgres".into(), cpu::Who::Command("postgres")));
    watch.push(("redis".into(), cpu::Who::Command("redis-server")));
    watch.push((LOAD_GENERATOR.into(), cpu::Who::Pid(std::process::id())));
    watch
}

/// WAL bytes PostgreSQL wrote between `warmup` and `warmup + duration` (`pg_stat_wal`,
/// server-wide: run the bench when nothing else writes).
async fn wal_window(url: String, warmup: Duration, duration: Duration) -> Option<f64> {
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(&url).await.ok()?;
    let read = || async {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT wal_bytes::float8 FROM pg_stat_wal",
            ))
            .await
            .ok()??;
        row.try_get_by_index::<f64>(0).ok()
    };
    tokio::time::sleep(warmup).await;
    let before = read().await?;
    tokio::time::sleep(duration).await;
    let after = read().await?;
    let _ = db.close().await;
    Some(after - before)
}

fn workload_name(notifying: bool) -> &'static str {
    if notifying { "notifying" } else { "silent" }
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

fn chrono_now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
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
