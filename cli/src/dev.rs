//! `cpis dev`: the four services in one process on the embedded default (SQLite under the
//! data directory), the gateway on 127.0.0.1:50051, tokens signed by a development key.

use crate::devkeys;
use anyhow::{Context, Result, bail};
use clap::Args;
use gateway::GatewayArgs;
use platform::config::{ServeArgs, TlsArgs};
use platform::runtime::Component;
use platform::server::Running;
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the SQLite databases and the development signing key live.
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "./cpis-data")]
    pub data_dir: PathBuf,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Start with organisations, flags and attendances loaded, and print tokens to try.
    #[arg(long)]
    pub demo: bool,
    /// Serve the gateway over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The running system: the gateway's address and every component's server.
pub struct DevSystem {
    pub gateway_addr: SocketAddr,
    pub components: Vec<(&'static str, Running)>,
}

/// Starts the four services in this process. The backends listen on ephemeral loopback
/// ports and trust the in-process gateway as a loopback peer.
pub async fn start(args: &DevArgs, shutdown: Shutdown) -> Result<DevSystem> {
    if args.demo {
        bail!("--demo needs the demo dataset loader, which is not built yet");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let keys = devkeys::ensure(&args.data_dir)?;

    let access = access_service::AccessService::start(
        access_service::AccessArgs::embedded(args.data_dir.clone()),
        shutdown.clone(),
    )
    .await?;
    let flag = flag_service::FlagService::start(
        flag_service::FlagArgs::embedded(args.data_dir.clone()),
        shutdown.clone(),
    )
    .await?;
    let attendance = attendance_service::AttendanceService::start(
        attendance_service::AttendanceArgs::embedded(args.data_dir.clone()),
        shutdown.clone(),
    )
    .await?;

    let mut gateway_serve = ServeArgs::embedded(args.data_dir.clone());
    gateway_serve.listen = Some(args.listen);
    gateway_serve.insecure_internal = false;
    gateway_serve.tls = TlsArgs {
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        ..TlsArgs::default()
    };
    let gateway_args = GatewayArgs {
        serve: gateway_serve,
        flag_url: format!("http://{}", flag.addr),
        attendance_url: format!("http://{}", attendance.addr),
        access_url: format!("http://{}", access.addr),
        jwks_file: Some(keys.jwks_path.clone()),
        token_issuer: devkeys::ISSUER.into(),
        token_audience: devkeys::AUDIENCE.into(),
    };
    let gateway = gateway::Gateway::start(gateway_args, shutdown.clone())
        .await
        .with_context(|| format!("starting the gateway on {}", args.listen))?;
    Ok(DevSystem {
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
