//! Configuration shared by every service: clap flags with the same environment fallbacks
//! everywhere (ARCHITECTURE.md "Storage, configuration, modes").

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Whether a service runs its database migrations when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    /// Run pending migrations at start, under a lock (the default; safe with replicas).
    Auto,
    /// Never migrate at start: the Kubernetes migration Job does it (`<service> migrate`).
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a service keeps its state.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Directory for local state: the SQLite database when no URL is given, development keys.
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "./cpis-data")]
    pub data_dir: PathBuf,

    /// Database URL (`postgres://user@host/db` or `sqlite://path?mode=rwc`); default: a
    /// SQLite file named after the service under the data directory.
    #[arg(long, env = "CPIS_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// Transport security; every path is a PEM file, re-read when it changes.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// This server's certificate chain (PEM). With `--tls-key`, the server speaks TLS.
    #[arg(long, env = "CPIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// This server's private key (PEM).
    #[arg(long, env = "CPIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle that clients of this server must present certificates from (mTLS).
    #[arg(long, env = "CPIS_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// CA bundle of our own services, trusted when calling them.
    #[arg(long, env = "CPIS_TLS_INTERNAL_CA")]
    pub tls_internal_ca: Option<PathBuf>,

    /// The certificate this service presents when it calls our other services (gateway).
    #[arg(long, env = "CPIS_TLS_INTERNAL_CERT", requires = "tls_internal_key")]
    pub tls_internal_cert: Option<PathBuf>,

    /// The private key of `--tls-internal-cert`.
    #[arg(long, env = "CPIS_TLS_INTERNAL_KEY", requires = "tls_internal_cert")]
    pub tls_internal_key: Option<PathBuf>,

    /// SANs of the gateway's client certificate: a backend believes forwarded identities only
    /// from a peer presenting one of them (comma-separated).
    #[arg(
        long = "gateway-san",
        env = "CPIS_GATEWAY_SAN",
        value_delimiter = ',',
        default_value = "spiffe://cluster.local/ns/cpis/sa/gateway"
    )]
    pub gateway_sans: Vec<String>,
}

/// Everything a backend or the gateway needs to serve.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// gRPC listen address (default: the service's own port on 127.0.0.1).
    #[arg(long, env = "CPIS_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Plaintext `grpc.health.v1` listener for kubelet probes (optional; health is also
    /// served on the main listener).
    #[arg(long, env = "CPIS_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Prometheus metrics listener (optional): `GET /metrics` on plain HTTP.
    #[arg(long, env = "CPIS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Redis URL (`redis://host:6379`) for the shared cache; without it, no shared cache.
    #[arg(long, env = "CPIS_REDIS_URL")]
    pub redis_url: Option<String>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Run database migrations at start (`auto`) or leave them to `<service> migrate` (`off`).
    #[arg(long, env = "CPIS_MIGRATE", value_enum, default_value_t = MigrateMode::Auto)]
    pub migrate: MigrateMode,

    /// Trust forwarded identities from loopback peers without mTLS (development only): the
    /// service then binds to loopback only and warns at start.
    #[arg(long, env = "CPIS_INSECURE_INTERNAL")]
    pub insecure_internal: bool,

    /// Seconds to let unary calls in flight finish after SIGTERM.
    #[arg(long, env = "CPIS_GRACE_PERIOD", default_value_t = 20)]
    pub grace_period: u64,

    /// Calls in flight past which new calls are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CPIS_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Set only by `cpis dev`: serve over an in-process pair instead of a port, trusting
    /// exactly the calls that arrive over it.
    #[arg(skip)]
    pub in_process: Option<crate::inproc::Accept>,
}

pub const DEFAULT_MAX_IN_FLIGHT: usize = 2048;

/// What one client connection may hold. Each bound has a stated default; see
/// `docs/abuse.md` for the attack each one stops.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionArgs {
    /// Concurrent HTTP/2 streams (calls) one connection may have open.
    #[arg(
        long,
        env = "CPIS_MAX_STREAMS_PER_CONNECTION",
        default_value_t = ConnectionArgs::DEFAULT.max_streams_per_connection
    )]
    pub max_streams_per_connection: u32,

    /// Seconds after which a connection is closed gracefully (HTTP/2 GOAWAY; calls in flight
    /// finish), idle or not: nothing holds a connection for ever, and clients reconnect to
    /// whichever replica the load balancer picks.
    #[arg(
        long,
        env = "CPIS_MAX_CONNECTION_AGE",
        default_value_t = ConnectionArgs::DEFAULT.max_connection_age
    )]
    pub max_connection_age: u64,

    /// Seconds within which a unary call's request must have arrived whole.
    #[arg(
        long,
        env = "CPIS_BODY_TIMEOUT",
        default_value_t = ConnectionArgs::DEFAULT.body_timeout
    )]
    pub body_timeout: u64,

    /// Seconds a client stream (UploadFlags) may pause between two messages.
    #[arg(
        long,
        env = "CPIS_STREAM_MESSAGE_GAP",
        default_value_t = ConnectionArgs::DEFAULT.stream_message_gap
    )]
    pub stream_message_gap: u64,
}

impl ConnectionArgs {
    pub const DEFAULT: ConnectionArgs = ConnectionArgs {
        max_streams_per_connection: 100,
        max_connection_age: 1800,
        body_timeout: 10,
        stream_message_gap: 30,
    };

    pub fn pace(&self) -> crate::limits::Pace {
        crate::limits::Pace {
            unary: Duration::from_secs(self.body_timeout),
            gap: Duration::from_secs(self.stream_message_gap),
        }
    }
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "CPIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP collector to export traces to (`http://collector:4317`); the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` works too. No endpoint, no export.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

impl LogArgs {
    /// For a process that takes no logging flags (`cpis dev`): `CPIS_LOG_FORMAT` if it says
    /// `json`, else text; the OTLP endpoint only from the standard `OTEL_*` variables.
    pub fn from_env() -> Self {
        let json = std::env::var("CPIS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        LogArgs {
            log_format: if json {
                LogFormat::Json
            } else {
                LogFormat::Text
            },
            otlp_endpoint: None,
        }
    }
}

impl ServeArgs {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_period)
    }

    /// Arguments for a component started inside another process (`cpis dev`, tests): no
    /// environment is read, state lives under `data_dir`.
    pub fn embedded(data_dir: PathBuf) -> Self {
        ServeArgs {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            health_listen: None,
            metrics_listen: None,
            database: DatabaseArgs {
                data_dir,
                database_url: None,
            },
            redis_url: None,
            tls: TlsArgs::default(),
            migrate: MigrateMode::Auto,
            insecure_internal: true,
            grace_period: 5,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            connections: ConnectionArgs::DEFAULT,
            in_process: None,
            log: LogArgs {
                log_format: LogFormat::Text,
                otlp_endpoint: None,
            },
        }
    }
}
