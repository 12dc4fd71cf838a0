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

    /// A file holding the database URL (a mounted Kubernetes Secret, say), read once at start;
    /// a trailing newline is trimmed. Setting both this and `--database-url` is an error.
    #[arg(
        long,
        env = "CPIS_DATABASE_URL_FILE",
        value_name = "PATH",
        value_parser = SecretFile::read,
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<SecretFile>,

    #[command(flatten)]
    pub datastore_tls: DatastoreTlsArgs,
}

/// How a service reaches its datastores (PostgreSQL and Redis) over TLS; read at start. The
/// checks and the certificate handling are in [`crate::datastore`].
#[derive(Args, Debug, Clone, Default)]
pub struct DatastoreTlsArgs {
    /// A PEM CA bundle that PostgreSQL's and Redis' server certificates must chain to, trusted
    /// besides the default roots (webpki's for PostgreSQL; for Redis it replaces the system
    /// store). Read once at start: a new CA takes a restart. For PostgreSQL use it with
    /// `sslmode=verify-full` (`sslrootcert=` in the URL works too); for Redis with `rediss://`.
    #[arg(long, env = "CPIS_DATASTORE_CA_FILE", value_name = "PATH")]
    pub datastore_ca_file: Option<PathBuf>,

    /// Refuse to start with a datastore URL that could connect without verified TLS: a
    /// PostgreSQL URL whose effective sslmode is not `verify-full`, a `redis://` (not
    /// `rediss://`) or `#insecure` Redis URL, or SQLite. On in production.
    #[arg(long, env = "CPIS_REQUIRE_DATASTORE_TLS")]
    pub require_datastore_tls: bool,
}

impl DatabaseArgs {
    /// The configured URL, from `--database-url` or the file `--database-url-file` names.
    pub fn url(&self) -> Option<&str> {
        self.database_url
            .as_deref()
            .or(self.database_url_file.as_ref().map(SecretFile::value))
    }
}

/// A secret read from a file at start (`*_FILE` options): the value, and the path it came
/// from. `Debug` shows the path only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    path: PathBuf,
    value: String,
}

impl SecretFile {
    /// Reads `path`, trimming one trailing newline (`\n` or `\r\n`); an unreadable or empty
    /// file is an error.
    pub fn read(path: &str) -> Result<SecretFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let value = text
            .strip_suffix('\n')
            .map(|v| v.strip_suffix('\r').unwrap_or(v))
            .unwrap_or(&text);
        if value.is_empty() {
            return Err(format!("{path} is empty"));
        }
        Ok(SecretFile {
            path: PathBuf::from(path),
            value: value.to_owned(),
        })
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
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

    /// A file holding the Redis URL, read once at start (trailing newline trimmed); setting
    /// both this and `--redis-url` is an error.
    #[arg(
        long,
        env = "CPIS_REDIS_URL_FILE",
        value_name = "PATH",
        value_parser = SecretFile::read,
        conflicts_with = "redis_url"
    )]
    pub redis_url_file: Option<SecretFile>,

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
    /// The configured Redis URL, from `--redis-url` or the file `--redis-url-file` names.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url
            .as_deref()
            .or(self.redis_url_file.as_ref().map(SecretFile::value))
    }

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
                database_url_file: None,
                datastore_tls: DatastoreTlsArgs::default(),
            },
            redis_url: None,
            redis_url_file: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
    }

    fn secret(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn urls_come_from_files_with_one_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let db = secret(&dir, "db", "postgres://flag:pw@db:5432/flag\n");
        let redis = secret(&dir, "redis", "rediss://:pw@redis:6379/0\r\n");
        let cli = parse(&["--database-url-file", &db, "--redis-url-file", &redis]).unwrap();
        assert_eq!(
            cli.serve.database.url(),
            Some("postgres://flag:pw@db:5432/flag")
        );
        assert_eq!(cli.serve.redis_url(), Some("rediss://:pw@redis:6379/0"));
        assert_eq!(cli.serve.database.database_url, None);

        // Without a newline the file is taken as it is; only one newline goes.
        let bare = secret(&dir, "bare", "postgres://x@h/d");
        let two = secret(&dir, "two", "postgres://x@h/d\n\n");
        let cli = parse(&["--database-url-file", &bare]).unwrap();
        assert_eq!(cli.serve.database.url(), Some("postgres://x@h/d"));
        let cli = parse(&["--database-url-file", &two]).unwrap();
        assert_eq!(cli.serve.database.url(), Some("postgres://x@h/d\n"));
    }

    #[test]
    fn plain_urls_still_work_and_nothing_set_means_none() {
        let cli = parse(&[
            "--database-url",
            "postgres://a@b/c",
            "--redis-url",
            "redis://r",
        ])
        .unwrap();
        assert_eq!(cli.serve.database.url(), Some("postgres://a@b/c"));
        assert_eq!(cli.serve.redis_url(), Some("redis://r"));
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.serve.database.url(), None);
        assert_eq!(cli.serve.redis_url(), None);
    }

    #[test]
    fn a_url_and_its_file_together_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret(&dir, "url", "postgres://a@b/c\n");
        let e = parse(&[
            "--database-url",
            "postgres://a@b/c",
            "--database-url-file",
            &file,
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
        let e = parse(&["--redis-url", "redis://r", "--redis-url-file", &file]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[test]
    fn a_missing_or_empty_file_is_an_error_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent").display().to_string();
        let e = parse(&["--database-url-file", &missing]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
        assert!(e.to_string().contains("cannot read"), "{e}");
        let empty = secret(&dir, "empty", "\n");
        let e = parse(&["--redis-url-file", &empty]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn debug_shows_the_path_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret(&dir, "url", "postgres://flag:hunter2@db/flag\n");
        let cli = parse(&["--database-url-file", &file]).unwrap();
        let shown = format!("{:?}", cli.serve.database);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(&file), "{shown}");
    }

    /// The environment variables behave as the flags do. Run in a child process, since this
    /// crate cannot set variables in its own (`std::env::set_var` is unsafe).
    #[test]
    fn the_environment_variables_conflict_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret(&dir, "url", "postgres://from-file@db/flag\n");
        let run = |envs: &[(&str, &str)]| {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child
                .args(["--exact", "config::tests::env_child", "--nocapture"])
                .env_remove("CPIS_DATABASE_URL")
                .env_remove("CPIS_DATABASE_URL_FILE")
                .env_remove("CPIS_REDIS_URL")
                .env_remove("CPIS_REDIS_URL_FILE");
            for (k, v) in envs {
                child.env(k, v);
            }
            child.output().unwrap()
        };
        let out = run(&[
            ("CPIS_CONFIG_TEST_EXPECT", "conflict"),
            ("CPIS_DATABASE_URL", "postgres://plain@db/flag"),
            ("CPIS_DATABASE_URL_FILE", &file),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let out = run(&[
            ("CPIS_CONFIG_TEST_EXPECT", "postgres://from-file@db/flag"),
            ("CPIS_DATABASE_URL_FILE", &file),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The child of [`the_environment_variables_conflict_too`]; passes trivially on its own.
    #[test]
    fn env_child() {
        let Ok(expect) = std::env::var("CPIS_CONFIG_TEST_EXPECT") else {
            return;
        };
        match (expect.as_str(), parse(&[])) {
            ("conflict", Err(e)) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}")
            }
            (url, Ok(cli)) => assert_eq!(cli.serve.database.url(), Some(url)),
            (expect, Err(e)) => panic!("expected {expect}, got {e}"),
        }
    }
}
