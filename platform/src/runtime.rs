//! How a service process starts and stops, one way for all four: the command line
//! (`<service>` serves, `<service> migrate` migrates and exits), logging, signals, and for a
//! backend its database, readiness and the rule on internal trust.

use crate::config::{DatabaseArgs, ServeArgs};
use crate::database;
use crate::error::{Error, Result};
use crate::health::Readiness;
use crate::principal::PeerTrust;
use crate::server::{self, Running, ServeConfig};
use crate::shutdown::Shutdown;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use tonic::service::Routes;

/// A cpis service: the gateway or a backend.
pub trait Component {
    /// The binary's name (`flag-service`).
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    type Args: clap::Args + Clone + Send + 'static;
    fn start(args: Self::Args, shutdown: Shutdown) -> impl Future<Output = Result<Running>> + Send;
    fn migrate(args: DatabaseArgs) -> impl Future<Output = Result<()>> + Send;
    fn log_args(args: &Self::Args) -> &crate::config::LogArgs;
}

#[derive(Parser, Debug)]
struct ServiceCli<A: clap::Args> {
    #[command(subcommand)]
    command: Option<ServiceCommand>,
    #[command(flatten)]
    args: A,
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Serve (the default when no subcommand is given).
    Serve,
    /// Apply pending database migrations, then exit (the Kubernetes migration Job).
    Migrate(DatabaseArgs),
}

/// The whole `main` of a service binary.
pub fn main<C: Component>() -> ExitCode {
    let command = ServiceCli::<C::Args>::command()
        .name(C::NAME)
        .bin_name(C::NAME)
        .about(C::ABOUT);
    let cli = match ServiceCli::<C::Args>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", C::NAME);
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let telemetry = crate::telemetry::init(C::NAME, C::log_args(&cli.args))?;
        let outcome = match cli.command {
            Some(ServiceCommand::Migrate(db)) => C::migrate(db).await.map(|()| {
                tracing::info!(service = C::NAME, "migrations applied");
            }),
            Some(ServiceCommand::Serve) | None => {
                match C::start(cli.args, Shutdown::on_signals()).await {
                    Ok(running) => running.wait().await,
                    Err(e) => Err(e),
                }
            }
        };
        // The spans of the last calls leave before the process does.
        telemetry.shutdown().await;
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", C::NAME);
            ExitCode::FAILURE
        }
    }
}

/// What a backend's handlers get: their database, readiness and the peers they may trust.
#[derive(Clone)]
pub struct BackendContext {
    pub db: DatabaseConnection,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    pub peer_trust: PeerTrust,
    pub redis_url: Option<String>,
}

/// What makes a backend: its name, default port, migrations and gRPC services.
pub struct Backend<M> {
    pub name: &'static str,
    pub default_listen: SocketAddr,
    pub services: Vec<&'static str>,
    pub migrator: std::marker::PhantomData<M>,
}

impl<M: MigratorTrait + Send + Sync + 'static> Backend<M> {
    /// Connects (lazily), keeps readiness current in the background, and serves the routes
    /// `make_routes` builds.
    pub async fn start(
        self,
        args: &ServeArgs,
        shutdown: Shutdown,
        make_routes: impl FnOnce(BackendContext) -> Routes,
    ) -> Result<Running> {
        let listen = args.listen.unwrap_or(self.default_listen);
        let peer_trust = internal_trust(self.name, args, listen)?;
        let url = database::database_url(&args.database, self.name)?;
        tracing::info!(service = self.name, database = %database::redact_url(&url), "starting");
        let db = database::connect(&url).await?;

        let reporter = tonic_health::server::HealthReporter::new();
        let readiness = Readiness::new(reporter, &self.services).await;
        tokio::spawn(database::keep_ready::<M>(
            db.clone(),
            url,
            self.name,
            args.migrate,
            readiness.clone(),
            shutdown.clone(),
        ));

        let context = BackendContext {
            db,
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            peer_trust,
            redis_url: args.redis_url.clone(),
        };
        let routes = make_routes(context);
        let listener = server::bind(listen).await?;
        if let Some(addr) = args.metrics_listen {
            crate::metrics::serve(addr, shutdown.clone()).await?;
        }
        let config = ServeConfig {
            name: self.name,
            services: self.services,
            grace: args.grace(),
            tls: crate::tls::ServerTls::from_args(&args.tls, crate::tls::ClientAuth::Required)?,
            health_listen: args.health_listen,
            max_in_flight: args.max_in_flight,
        };
        server::spawn(config, listener, routes, readiness, shutdown).await
    }
}

/// Backends believe forwarded identities only from the gateway: with mTLS, a peer whose client
/// certificate carries the gateway's SAN; without it, only under `--insecure-internal`, and
/// then only on loopback.
fn internal_trust(name: &str, args: &ServeArgs, listen: SocketAddr) -> Result<PeerTrust> {
    let mtls = args.tls.tls_cert.is_some() && args.tls.tls_client_ca.is_some();
    if mtls {
        if args.tls.gateway_sans.is_empty() {
            return Err(Error::FailedPrecondition(
                "--gateway-san must name the gateway's certificate".into(),
            ));
        }
        return Ok(PeerTrust::Gateway {
            sans: args.tls.gateway_sans.clone(),
        });
    }
    if !args.insecure_internal {
        return Err(Error::FailedPrecondition(format!(
            "{name} needs mutual TLS with the gateway (--tls-cert, --tls-key, --tls-client-ca), \
             or --insecure-internal for development on loopback"
        )));
    }
    if !listen.ip().is_loopback() {
        return Err(Error::FailedPrecondition(format!(
            "--insecure-internal serves on loopback only, not on {listen}"
        )));
    }
    tracing::warn!(
        service = name,
        "--insecure-internal: trusting forwarded identities from loopback peers without mTLS"
    );
    Ok(PeerTrust::Loopback)
}

/// Migrations for `<service> migrate`.
pub async fn migrate<M: MigratorTrait>(name: &str, args: &DatabaseArgs) -> Result<()> {
    let url = database::database_url(args, name)?;
    database::migrate::<M>(&url, name).await
}
