//! `cpis dev`: the four services in one process on the embedded default (SQLite under the
//! data directory), the gateway on 127.0.0.1:50051, tokens signed by a development key.

use crate::connect::GatewayArgs;
use crate::{devkeys, token};
use anyhow::{Context, Result, bail};
use clap::Args;
use platform::config::{ServeArgs, TlsArgs};
use platform::inproc;
use platform::runtime::Component;
use platform::server::Running;
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the SQLite databases and the development signing key live.
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "./cpis-data")]
    pub data_dir: PathBuf,
    /// The gateway's address.
    #[arg(long, env = "CPIS_DEV_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Start with organisations, flags and attendances loaded, and print tokens to try.
    #[arg(long, conflicts_with = "tls_cert")]
    pub demo: bool,
    /// Serve the gateway over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates from this CA (PEM), so that a council system registered
    /// with `cpis system register` can call with `--client-cert` and no token.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The running system: the gateway's address and every component's server.
pub struct DevSystem {
    pub gateway_addr: SocketAddr,
    /// With `--demo`: what to try first (tokens, flagged NHS numbers, a lookup command).
    pub demo: Option<String>,
    pub components: Vec<(&'static str, Running)>,
}

/// Starts the four services in this process. The backends are served over in-process pairs
/// (tonic over an in-memory duplex): no internal hop opens a port or a socket that another
/// local process could reach, and each backend trusts exactly the calls from its pair.
pub async fn start(args: &DevArgs, shutdown: Shutdown) -> Result<DevSystem> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let keys = devkeys::ensure(&args.data_dir)?;
    let (access_pair, flag_pair, attendance_pair) =
        (inproc::pair(), inproc::pair(), inproc::pair());

    let mut access_args = access_service::AccessArgs::embedded(args.data_dir.clone());
    access_args.serve.in_process = Some(access_pair.1);
    let access = access_service::AccessService::start(access_args, shutdown.clone()).await?;
    let mut flag_args = flag_service::FlagArgs::embedded(args.data_dir.clone());
    flag_args.serve.in_process = Some(flag_pair.1);
    let flag = flag_service::FlagService::start(flag_args, shutdown.clone()).await?;
    let mut attendance_args = attendance_service::AttendanceArgs::embedded(args.data_dir.clone());
    attendance_args.serve.in_process = Some(attendance_pair.1);
    let attendance =
        attendance_service::AttendanceService::start(attendance_args, shutdown.clone()).await?;

    let mut gateway_serve = ServeArgs::embedded(args.data_dir.clone());
    gateway_serve.listen = Some(args.listen);
    gateway_serve.insecure_internal = false;
    gateway_serve.tls = TlsArgs {
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_client_ca: args.tls_client_ca.clone(),
        ..TlsArgs::default()
    };
    let gateway_args = gateway::GatewayArgs {
        serve: gateway_serve,
        // Unused: the backends are reached over their in-process pairs.
        flag_url: String::new(),
        attendance_url: String::new(),
        access_url: String::new(),
        jwks_file: Some(keys.jwks_path.clone()),
        identity_provider: gateway::IdentityProviderArgs::default(),
        token_issuer: devkeys::ISSUER.into(),
        token_audience: devkeys::AUDIENCE.into(),
        max_watches: gateway::DEFAULT_MAX_WATCHES,
        max_watches_per_organisation: gateway::DEFAULT_MAX_WATCHES_PER_ORGANISATION,
        watch_recheck_seconds: gateway::DEFAULT_WATCH_RECHECK_SECONDS,
    };
    let pairs = gateway::InProcessBackends {
        flag: flag_pair.0,
        attendance: attendance_pair.0,
        access: access_pair.0,
    };
    let gateway = gateway::Gateway::start_in_process(gateway_args, pairs, shutdown.clone())
        .await
        .with_context(|| format!("starting the gateway on {}", args.listen))?;
    let demo = if args.demo {
        Some(demo_intro(&args.data_dir, gateway.addr).await?)
    } else {
        None
    };
    Ok(DevSystem {
        demo,
        gateway_addr: gateway.addr,
        components: vec![
            ("gateway", gateway),
            ("access-service", access),
            ("flag-service", flag),
            ("attendance-service", attendance),
        ],
    })
}

pub async fn run(args: DevArgs) -> Result<()> {
    let _telemetry = platform::telemetry::init("cpis", &platform::config::LogArgs::from_env())?;
    let shutdown = Shutdown::on_signals();
    let system = start(&args, shutdown).await?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let data_dir = args.data_dir.display();
    eprintln!(
        "\ncpis dev: gateway on {scheme}://{addr} (state in {data_dir}); Ctrl-C stops.\n\
         Mint a token:  cpis token --data-dir {data_dir} --user dr.jones --org RQX --role R8000 --activity B0107\n",
        addr = system.gateway_addr,
    );
    if let Some(intro) = &system.demo {
        eprintln!("{intro}");
    }
    let mut failed = false;
    for (name, running) in system.components {
        if let Err(e) = running.wait().await {
            tracing::error!(component = name, error = %e, "stopped with an error");
            failed = true;
        }
    }
    if failed {
        bail!("a component stopped with an error")
    } else {
        Ok(())
    }
}

/// Marks a data directory whose demo data is loaded, so a restart does not load it twice
/// (uploads are idempotent, but lookups would record new attendances).
const DEMO_MARKER: &str = "demo-loaded";
const DEMO_SEED: u64 = 1;

/// Loads the small demo dataset through the gateway (once per data directory) and says what
/// to try.
async fn demo_intro(data_dir: &Path, gateway_addr: SocketAddr) -> Result<String> {
    use crate::demo;
    let today = platform::domain::england_date(chrono::Utc::now());
    let marker = data_dir.join(DEMO_MARKER);
    let dataset = match std::fs::read_to_string(&marker) {
        // The day the data was loaded fixes its dates, so the same dataset is described.
        Ok(day) => demo::generate(
            DEMO_SEED,
            demo::DEV_SIZES,
            platform::domain::parse_date(day.trim()).unwrap_or(today),
        ),
        Err(_) => {
            let dataset = demo::generate(DEMO_SEED, demo::DEV_SIZES, today);
            let gateway = GatewayArgs {
                gateway: format!("http://{gateway_addr}"),
                token: None,
                ca_cert: None,
                client_cert: None,
                client_key: None,
                deadline: Duration::from_secs(30),
            };
            let report = demo::load(&dataset, &gateway, data_dir)
                .await
                .map_err(|f| anyhow::anyhow!(f.render()))
                .context("loading the demo data")?;
            tracing::info!(?report, "demo data loaded");
            std::fs::write(&marker, today.format("%Y-%m-%d\n").to_string())
                .with_context(|| format!("writing {}", marker.display()))?;
            dataset
        }
    };
    let keys = devkeys::load(data_dir)?;
    let ttl = Duration::from_secs(12 * 3600);
    let la = dataset
        .local_authorities
        .first()
        .context("the demo dataset has no local authority")?;
    let trust = dataset
        .trusts
        .first()
        .context("the demo dataset has no trust")?;
    let site = trust.sites.first().context("the demo trust has no site")?;
    let sign = |user: &str, org: &str, role: &str, activity: &str| {
        token::sign(&keys, user, org, role, &[activity.to_owned()], ttl)
    };
    let clinician = sign("dr.demo", &trust.ods_code, "R8000", "B0107")?;
    let la_token = sign("mash.demo", &la.ods_code, "R9000", "CPIS_LA_MANAGE")?;
    let admin = sign("demo.admin", demo::DEMO_ADMIN_ORG, "R0001", "CPIS_ADMIN")?;
    let auditor = sign("demo.auditor", demo::DEMO_ADMIN_ORG, "R5105", "CPIS_AUDIT")?;
    let flagged: Vec<&str> = dataset
        .open_flags()
        .take(3)
        .map(|(_, f)| f.nhs_number.as_str())
        .collect();
    let first = flagged.first().copied().unwrap_or_default();
    let default_gateway: SocketAddr = ([127, 0, 0, 1], 50051).into();
    let gateway_flag = if gateway_addr == default_gateway {
        String::new()
    } else {
        format!(" --gateway http://{gateway_addr}")
    };
    Ok(format!(
        "Demo data: {las} local authorities, {trusts} trusts, {flags} flags, {attendances} \
         attendances (loaded once into this data directory).\n\
         Tokens to try (valid 12 hours):\n\
         \x20 clinician at {trust_name} ({trust_code}, B0107):\n    {clinician}\n\
         \x20 local authority {la_name} ({la_code}, CPIS_LA_MANAGE):\n    {la_token}\n\
         \x20 administrator (CPIS_ADMIN):\n    {admin}\n\
         \x20 auditor (CPIS_AUDIT):\n    {auditor}\n\
         Flagged NHS numbers: {numbers}\n\
         Try:\n\
         \x20 cpis lookup {first} --setting {site} --setting-type emergency-department{gateway_flag} --token {clinician}\n",
        las = dataset.local_authorities.len(),
        trusts = dataset.trusts.len(),
        flags = dataset
            .local_authorities
            .iter()
            .map(|l| l.flags.len())
            .sum::<usize>(),
        attendances = dataset.attendances.len(),
        trust_name = trust.name,
        trust_code = trust.ods_code,
        la_name = la.name,
        la_code = la.ods_code,
        numbers = flagged.join(", "),
        site = site.ods_code,
    ))
}
