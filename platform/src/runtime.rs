//! How a service process starts and stops, one way for all four: the command line
//! (`<service>` serves, `<service> migrate` migrates and exits), logging, signals, and for a
//! backend its database, readiness and the rule on internal trust.

use crate::config::{DatabaseArgs, ServeArgs};
use crate::database;
use crate::datastore::DatastoreTls;
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
}

impl BackendContext {
    /// Keeps gauges read from storage current: `refresh` runs every `every` and before each
    /// scrape, only while the service is ready (its schema present), until shutdown.
    pub async fn keep_gauges_current<F, Fut>(self, every: std::time::Duration, refresh: F)
    where
        F: Fn(DatabaseConnection) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (readiness, db, on_scrape) = (self.readiness.clone(), self.db.clone(), refresh.clone());
        crate::metrics::metrics().on_scrape(move || {
            let (db, ready, refresh) = (db.clone(), readiness.is_ready(), on_scrape.clone());
            async move {
                if ready {
                    refresh(db).await;
                }
            }
        });
        loop {
            if self.readiness.is_ready() {
                refresh(self.db.clone()).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.shutdown.wait() => return,
            }
        }
    }
}

/// What makes a backend, and all that differs between the three: its name, default port,
/// migrations, arguments and the routes it serves. Start-up, migration and logging are the
/// same for every backend ([`Component`] is implemented once, below).
pub trait BackendService {
    const NAME: &'static str;
    const ABOUT: &'static str;
    const DEFAULT_LISTEN: SocketAddr;
    /// The gRPC services it serves, for health and reflection.
    const SERVICES: &'static [&'static str];
    type Migrator: MigratorTrait + Send + Sync + 'static;
    type Args: clap::Args + Clone + Send + Sync + 'static;

    fn serve_args(args: &Self::Args) -> &ServeArgs;

    /// The routes, built once the database is connected and before anything is bound: what
    /// fails here (a bad key file, say) stops the start at once with a clear message.
    fn routes(args: &Self::Args, context: BackendContext) -> Result<Routes>;

    /// Spawns the background work of a started backend (purges, gauges); nothing by default.
    fn serving(args: &Self::Args, context: BackendContext) {
        let _ = (args, context);
    }
}

impl<B: BackendService> Component for B {
    const NAME: &'static str = B::NAME;
    const ABOUT: &'static str = B::ABOUT;
    type Args = B::Args;

    async fn start(args: B::Args, shutdown: Shutdown) -> Result<Running> {
        let serve = B::serve_args(&args);
        let (running, context) = start_backend::<B::Migrator>(
            B::NAME,
            B::DEFAULT_LISTEN,
            B::SERVICES,
            serve,
            shutdown,
            |context| B::routes(&args, context),
        )
        .await?;
        // Only once serving: a start that failed leaves nothing running behind it.
        B::serving(&args, context);
        Ok(running)
    }

    async fn migrate(args: DatabaseArgs) -> Result<()> {
        let url = database::database_url(&args, B::NAME)?;
        let tls = DatastoreTls::from_args(&args.datastore_tls)?;
        database::migrate_with::<B::Migrator>(&url, B::NAME, &tls).await
    }

    fn log_args(args: &B::Args) -> &crate::config::LogArgs {
        &B::serve_args(args).log
    }
}

/// Connects (lazily), keeps readiness current in the background, and serves the routes
/// `make_routes` builds.
async fn start_backend<M: MigratorTrait + Send + Sync + 'static>(
    name: &'static str,
    default_listen: SocketAddr,
    services: &'static [&'static str],
    args: &ServeArgs,
    shutdown: Shutdown,
    make_routes: impl FnOnce(BackendContext) -> Result<Routes>,
) -> Result<(Running, BackendContext)> {
    let listen = args.listen.unwrap_or(default_listen);
    let peer_trust = match &args.in_process {
        Some(_) => PeerTrust::InProcess,
        None => internal_trust(name, args, listen)?,
    };
    let url = database::database_url(&args.database, name)?;
    tracing::info!(service = name, database = %database::redact_url(&url), "starting");
    let tls = DatastoreTls::from_args(&args.database.datastore_tls)?;
    let db = database::connect_with(&url, &tls).await?;
    // The Redis URL too, before anything is bound: its client is built later, by the backend.
    if let Some(redis) = args.redis_url() {
        tls.check_redis_url(redis)?;
    }

    let reporter = tonic_health::server::HealthReporter::new();
    let readiness = Readiness::new(reporter, services).await;
    tokio::spawn(database::keep_ready::<M>(
        db.clone(),
        url,
        tls,
        name,
        args.migrate,
        readiness.clone(),
        shutdown.clone(),
    ));

    let context = BackendContext {
        db,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        peer_trust,
    };
    let routes = make_routes(context.clone())?;
    let listener = match &args.in_process {
        Some(accept) => server::Listen::InProcess(accept.clone()),
        None => server::Listen::Tcp(server::bind(listen).await?),
    };
    if let Some(addr) = args.metrics_listen {
        crate::metrics::serve(addr, shutdown.clone()).await?;
    }
    let config = ServeConfig {
        name,
        services: services.to_vec(),
        grace: args.grace(),
        tls: crate::tls::ServerTls::from_args(&args.tls, crate::tls::ClientAuth::Required)?,
        health_listen: args.health_listen,
        max_in_flight: args.max_in_flight,
        // Peers are authenticated by mTLS (or loopback in development) at the connection.
        admit: None,
        limits: None,
        connections: args.connections,
    };
    let running = server::spawn(config, listener, routes, readiness, shutdown).await?;
    Ok((running, context))
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
