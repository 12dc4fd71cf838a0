//! gateway: the one public entry point of cpis.
//!
//! It serves `cpis.gateway.v1` (ChildProtection, LocalAuthority, Audit, Administration):
//! authenticate, ask access-service for a decision, fan out to flag-service and
//! attendance-service in parallel, compose the answer. It owns no database; every
//! cross-service step is orchestrated here (backends never call each other).

mod api;
mod auth;
mod backends;
mod calls;
mod core;
mod deadline;
mod keys;
mod limits;
mod lookup;
mod obligations;
mod pool;
mod streams;

pub use auth::Authenticator;
pub use backends::Backends;

use clap::Args;
use cpis_proto::gateway::administration_server::AdministrationServer;
use cpis_proto::gateway::audit_server::AuditServer;
use cpis_proto::gateway::child_protection_server::ChildProtectionServer;
use cpis_proto::gateway::local_authority_server::LocalAuthorityServer;
use cpis_proto::service_names;
use platform::config::{DatabaseArgs, LogArgs, ServeArgs};
use platform::health::Readiness;
use platform::runtime::Component;
use platform::server::{self, Running, ServeConfig};
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::service::Routes;

pub const NAME: &str = "gateway";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);

/// The public services this process serves.
pub const SERVICES: [&str; 4] = [
    service_names::CHILD_PROTECTION,
    service_names::LOCAL_AUTHORITY,
    service_names::AUDIT,
    service_names::ADMINISTRATION,
];

pub const DEFAULT_MAX_WATCHES: usize = 1024;
pub const DEFAULT_MAX_WATCHES_PER_ORGANISATION: usize = 8;
pub const DEFAULT_WATCH_RECHECK_SECONDS: u64 = 30;
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 300;
pub const DEFAULT_JWKS_MIN_REFRESH_SECONDS: u64 = 10;
pub const DEFAULT_JWKS_START_WAIT_SECONDS: u64 = 30;

/// Where user tokens' keys come from besides `--jwks-file`: the identity provider (NHS CIS2),
/// over HTTPS. At most one of `--jwks-file`, `--jwks-url` and `--oidc-issuer`.
#[derive(Args, Debug, Clone)]
pub struct IdentityProviderArgs {
    /// The identity provider's issuer URL (`https://`): its OpenID Connect discovery document
    /// (`<issuer>/.well-known/openid-configuration`) names the key set, and must name
    /// `--token-issuer` as its issuer.
    #[arg(long, env = "CPIS_OIDC_ISSUER", conflicts_with_all = ["jwks_url", "jwks_file"])]
    pub oidc_issuer: Option<String>,

    /// The identity provider's key set URL (`https://`), without discovery.
    #[arg(long, env = "CPIS_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,

    /// CA certificates (PEM) trusted for the identity provider besides the system's roots
    /// (which `SSL_CERT_FILE` and `SSL_CERT_DIR` replace).
    #[arg(long, env = "CPIS_OIDC_CA_FILE")]
    pub oidc_ca_file: Option<PathBuf>,

    /// Seconds between fetches of the provider's keys when nothing asks sooner (a token
    /// naming an unknown key asks at once).
    #[arg(long, env = "CPIS_JWKS_REFRESH_SECONDS", default_value_t = DEFAULT_JWKS_REFRESH_SECONDS)]
    pub jwks_refresh_seconds: u64,

    /// The least seconds between two fetches of the provider's keys, however many tokens
    /// name unknown keys.
    #[arg(long, env = "CPIS_JWKS_MIN_REFRESH_SECONDS", default_value_t = DEFAULT_JWKS_MIN_REFRESH_SECONDS)]
    pub jwks_min_refresh_seconds: u64,

    /// Seconds start-up waits for the provider's first key set before serving NOT_SERVING
    /// until it arrives (tests shorten it).
    #[arg(long, env = "CPIS_JWKS_START_WAIT_SECONDS", default_value_t = DEFAULT_JWKS_START_WAIT_SECONDS, hide = true)]
    pub jwks_start_wait_seconds: u64,
}

impl Default for IdentityProviderArgs {
    fn default() -> Self {
        IdentityProviderArgs {
            oidc_issuer: None,
            jwks_url: None,
            oidc_ca_file: None,
            jwks_refresh_seconds: DEFAULT_JWKS_REFRESH_SECONDS,
            jwks_min_refresh_seconds: DEFAULT_JWKS_MIN_REFRESH_SECONDS,
            jwks_start_wait_seconds: DEFAULT_JWKS_START_WAIT_SECONDS,
        }
    }
}

impl IdentityProviderArgs {
    fn settings(&self, expected_issuer: &str) -> Option<keys::Settings> {
        let source = match (&self.oidc_issuer, &self.jwks_url) {
            (Some(issuer), _) => keys::Source::Issuer(issuer.clone()),
            (None, Some(url)) => keys::Source::JwksUrl(url.clone()),
            (None, None) => return None,
        };
        let seconds = |n: u64| std::time::Duration::from_secs(n);
        Some(keys::Settings {
            source,
            expected_issuer: expected_issuer.to_owned(),
            ca_file: self.oidc_ca_file.clone(),
            refresh_every: seconds(self.jwks_refresh_seconds.max(1)),
            min_interval: seconds(self.jwks_min_refresh_seconds.max(1)),
            start_wait: seconds(self.jwks_start_wait_seconds),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// flag-service URL (`https://` with mTLS in production). Every address its host resolves
    /// to is an endpoint (a headless Service lists each pod); several URLs, comma-separated,
    /// name static endpoints. The same holds for the other backend URLs.
    #[arg(long, env = "CPIS_FLAG_URL", default_value = "http://127.0.0.1:50061")]
    pub flag_url: String,

    /// attendance-service URL.
    #[arg(
        long,
        env = "CPIS_ATTENDANCE_URL",
        default_value = "http://127.0.0.1:50062"
    )]
    pub attendance_url: String,

    /// access-service URL.
    #[arg(
        long,
        env = "CPIS_ACCESS_URL",
        default_value = "http://127.0.0.1:50063"
    )]
    pub access_url: String,

    /// JSON Web Key Set whose keys sign user tokens (re-read when it changes).
    #[arg(long, env = "CPIS_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    #[command(flatten)]
    pub identity_provider: IdentityProviderArgs,

    /// The `iss` every user token must carry.
    #[arg(long, env = "CPIS_TOKEN_ISSUER", default_value = "cpis-dev")]
    pub token_issuer: String,

    /// The `aud` every user token must carry.
    #[arg(long, env = "CPIS_TOKEN_AUDIENCE", default_value = "cpis")]
    pub token_audience: String,

    /// WatchNotifications streams this gateway relays at once, in all. Watches have their own
    /// capacity: they never take the permits unary calls need.
    #[arg(long, env = "CPIS_MAX_WATCHES", default_value_t = DEFAULT_MAX_WATCHES)]
    pub max_watches: usize,

    /// Seconds between the re-checks of an open watch: an organisation offboarded or a system
    /// removed ends its watches within this.
    #[arg(long, env = "CPIS_WATCH_RECHECK_SECONDS", default_value_t = DEFAULT_WATCH_RECHECK_SECONDS)]
    pub watch_recheck_seconds: u64,

    /// WatchNotifications streams open at once for one organisation (ODS code).
    #[arg(
        long,
        env = "CPIS_MAX_WATCHES_PER_ORGANISATION",
        default_value_t = DEFAULT_MAX_WATCHES_PER_ORGANISATION
    )]
    pub max_watches_per_organisation: usize,
}

/// How often each replica's reconciler looks for obligations left pending.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Gateway;

impl Component for Gateway {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "The public cpis API: authenticates, decides through access-service, composes the registries' answers";
    type Args = GatewayArgs;

    async fn start(args: GatewayArgs, shutdown: Shutdown) -> platform::Result<Running> {
        let internal_tls = match (
            &args.serve.tls.tls_internal_ca,
            &args.serve.tls.tls_internal_cert,
            &args.serve.tls.tls_internal_key,
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(platform::tls::ClientFiles {
                ca: ca.clone(),
                identity: Some((cert.clone(), key.clone())),
            }),
            (Some(_), _, _) => {
                return Err(platform::Error::FailedPrecondition(
                    "--tls-internal-ca needs --tls-internal-cert and --tls-internal-key: backends accept only the gateway's certificate".into(),
                ));
            }
            _ => None,
        };
        let backends = Backends::connect(
            &args.flag_url,
            &args.attendance_url,
            &args.access_url,
            internal_tls,
        )?;
        serve(args, backends, shutdown).await
    }

    async fn migrate(_: DatabaseArgs) -> platform::Result<()> {
        tracing::info!("the gateway owns no database: nothing to migrate");
        Ok(())
    }

    fn log_args(args: &GatewayArgs) -> &LogArgs {
        &args.serve.log
    }
}

impl Gateway {
    /// The gateway in front of backends running in this process over in-process pairs
    /// (`cpis dev`): no internal hop opens a port or a socket. The URL arguments are unused.
    pub async fn start_in_process(
        args: GatewayArgs,
        backends: InProcessBackends,
        shutdown: Shutdown,
    ) -> platform::Result<Running> {
        serve(args, Backends::in_process(&backends), shutdown).await
    }
}

/// The in-process pairs' client sides, one per backend.
pub struct InProcessBackends {
    pub flag: platform::inproc::Connect,
    pub attendance: platform::inproc::Connect,
    pub access: platform::inproc::Connect,
}

async fn serve(
    args: GatewayArgs,
    backends: Backends,
    shutdown: Shutdown,
) -> platform::Result<Running> {
    let readiness = Readiness::new(tonic_health::server::HealthReporter::new(), &SERVICES).await;
    tokio::spawn(backends::monitor(
        backends.clone(),
        readiness.reporter(),
        shutdown.clone(),
    ));

    let provider = args.identity_provider.settings(&args.token_issuer);
    let auth = match (&args.jwks_file, provider) {
        (Some(path), _) => Authenticator::from_file(
            path.clone(),
            args.token_issuer.clone(),
            args.token_audience.clone(),
        )?,
        (None, Some(settings)) => {
            Authenticator::from_provider(
                settings,
                args.token_issuer.clone(),
                args.token_audience.clone(),
            )
            .await?
        }
        (None, None) => {
            tracing::warn!(
                "no --jwks-file, --jwks-url or --oidc-issuer: every user token will be refused"
            );
            Authenticator::without_keys(args.token_issuer.clone(), args.token_audience.clone())
        }
    };
    // Ready from the start until shutdown: the gateway can always answer its own calls (with
    // UNAVAILABLE and RetryInfo while a backend is away), so a backend blip never empties the
    // load balancer. How the backends answer is monitored apart. The one exception is the
    // identity provider's first key set: without it no user call can be answered, so the pod
    // stays NOT_SERVING until it arrives (start-up waited for it already).
    if auth.awaiting_keys() {
        tracing::warn!(
            "no key set from the identity provider yet: NOT_SERVING until its keys arrive"
        );
        let (auth, readiness) = (auth.clone(), readiness.clone());
        tokio::spawn(async move {
            auth.keys_loaded().await;
            tracing::info!("the identity provider's first key set arrived: SERVING");
            readiness.set_dependency_ready(true).await;
        });
    } else {
        readiness.set_dependency_ready(true).await;
    }
    let core = Arc::new(core::Core {
        backends,
        auth,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        watches: streams::WatchLimits::new(
            args.max_watches,
            args.max_watches_per_organisation,
            std::time::Duration::from_secs(args.watch_recheck_seconds.max(1)),
        ),
    });
    tokio::spawn(obligations::reconcile(core.clone(), RECONCILE_EVERY));
    let admit = core.auth.admission();
    let api = api::PublicApi { core };
    // Every public service caps what it decodes: a 5,000-record upload batch fits with room.
    let max = server::MAX_MESSAGE_BYTES;
    let routes =
        Routes::new(ChildProtectionServer::new(api.clone()).max_decoding_message_size(max))
            .add_service(LocalAuthorityServer::new(api.clone()).max_decoding_message_size(max))
            .add_service(AuditServer::new(api.clone()).max_decoding_message_size(max))
            .add_service(AdministrationServer::new(api).max_decoding_message_size(max));

    let listen = args.serve.listen.unwrap_or(DEFAULT_LISTEN);
    let listener = server::bind(listen).await?;
    if let Some(addr) = args.serve.metrics_listen {
        platform::metrics::serve(addr, shutdown.clone()).await?;
    }
    let config = ServeConfig {
        name: NAME,
        services: SERVICES.to_vec(),
        grace: args.serve.grace(),
        tls: platform::tls::ServerTls::from_args(
            &args.serve.tls,
            platform::tls::ClientAuth::Optional,
        )?,
        health_listen: args.serve.health_listen,
        max_in_flight: args.serve.max_in_flight,
        admit: Some(admit),
        limits: Some(limits::public()),
        connections: args.serve.connections,
    };
    server::spawn(
        config,
        server::Listen::Tcp(listener),
        routes,
        readiness,
        shutdown,
    )
    .await
}
