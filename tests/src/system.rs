//! The whole system as separate processes on loopback, the way production runs it: three
//! backends with mTLS (certificates made by rcgen), the gateway in front, tokens signed by a
//! development key, and — when configured — PostgreSQL and Redis instead of SQLite.

use crate::certs::{Ca, GATEWAY_SAN, Pem};
use crate::{binary, free_port};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

pub const BACKENDS: [&str; 3] = ["access-service", "flag-service", "attendance-service"];

pub struct Options {
    /// Backends on PostgreSQL (and flag-service on Redis) when the test servers are configured.
    pub postgres: bool,
    /// Serve the public API over TLS, accepting council system certificates.
    pub public_tls: bool,
    /// An explicit database URL for a backend (by binary name), used instead of SQLite or the
    /// test server: the fault suite points them at its own PostgreSQL, through a proxy.
    pub database_urls: Vec<(&'static str, String)>,
    /// An explicit Redis URL for flag-service, instead of the test server's.
    pub redis_url: Option<String>,
    /// Wait for the gateway to be SERVING before returning (the backends are always waited
    /// for): a test of a gateway that starts NOT_SERVING, or refuses to start, says no.
    pub wait_for_gateway: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            postgres: true,
            public_tls: false,
            database_urls: Vec::new(),
            redis_url: None,
            wait_for_gateway: true,
        }
    }
}

struct Process {
    child: Child,
    port: u16,
    env: Vec<(String, String)>,
}

pub struct System {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub system_ca: Ca,
    processes: HashMap<&'static str, Process>,
    _databases: Vec<platform::testing::TestDatabase>,
    pub gateway_tls: bool,
    gateway_identity: Pem,
}

impl Drop for System {
    fn drop(&mut self) {
        for p in self.processes.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn spawn(name: &str, env: &[(String, String)], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    // The process's own environment last, so a test may set RUST_LOG (start_with).
    Command::new(binary(name))
        .env_remove("CPIS_INSECURE_INTERNAL")
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn kv(k: &str, v: impl AsRef<str>) -> (String, String) {
    (k.to_owned(), v.as_ref().to_owned())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl System {
    pub async fn start(options: Options) -> System {
        Self::start_with(options, |_| Vec::new()).await
    }

    /// Like [`System::start`], with more environment for each process (`extra_env(name)`),
    /// e.g. `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT` or `CPIS_METRICS_LISTEN`.
    pub async fn start_with(
        options: Options,
        extra_env: impl Fn(&str) -> Vec<(String, String)>,
    ) -> System {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("cpis internal CA");
        let system_ca = Ca::new("council systems CA");
        let ca_path = ca.write(dir.path(), "internal-ca");
        let system_ca_path = system_ca.write(dir.path(), "system-ca");
        cpis_cli::devkeys::ensure(dir.path()).unwrap();

        let mut databases = Vec::new();
        let mut processes = HashMap::new();
        let redis = if options.redis_url.is_some() {
            options.redis_url.clone()
        } else if options.postgres {
            platform::testing::redis_url()
        } else {
            None
        };
        for name in BACKENDS {
            let data = dir.path().join(name);
            std::fs::create_dir_all(&data).unwrap();
            let server: Pem = ca.server(dir.path(), name);
            let port = free_port();
            let mut env = vec![
                kv("CPIS_DATA_DIR", path_str(&data)),
                kv("CPIS_LISTEN", format!("127.0.0.1:{port}")),
                kv("CPIS_TLS_CERT", path_str(&server.cert)),
                kv("CPIS_TLS_KEY", path_str(&server.key)),
                kv("CPIS_TLS_CLIENT_CA", path_str(&ca_path)),
                kv("CPIS_GATEWAY_SAN", GATEWAY_SAN),
                kv("CPIS_GRACE_PERIOD", "5"),
            ];
            if let Some((_, url)) = options.database_urls.iter().find(|(n, _)| *n == name) {
                env.push(kv("CPIS_DATABASE_URL", url));
            } else if options.postgres
                && let Some(db) = platform::testing::postgres(name).await
            {
                env.push(kv("CPIS_DATABASE_URL", &db.url));
                databases.push(db);
            }
            if name == "flag-service"
                && let Some(url) = &redis
            {
                // Keys of its own on the shared Redis, so concurrent tests never meet.
                env.push(kv("CPIS_REDIS_URL", url));
                env.push(kv(
                    "CPIS_FLAG_CACHE_PREFIX",
                    format!("cpis-test:{}:{port}", std::process::id()),
                ));
            }
            env.extend(extra_env(name));
            let child = spawn(name, &env, &dir.path().join(format!("{name}.log")));
            processes.insert(name, Process { child, port, env });
        }

        let gateway_identity = ca.gateway(dir.path());
        let port = free_port();
        let url = |name: &str| format!("https://localhost:{}", processes[name].port);
        let mut env = vec![
            kv("CPIS_LISTEN", format!("127.0.0.1:{port}")),
            kv("CPIS_FLAG_URL", url("flag-service")),
            kv("CPIS_ATTENDANCE_URL", url("attendance-service")),
            kv("CPIS_ACCESS_URL", url("access-service")),
            kv("CPIS_JWKS_FILE", path_str(&dir.path().join("jwks.json"))),
            kv("CPIS_TOKEN_ISSUER", cpis_cli::devkeys::ISSUER),
            kv("CPIS_TOKEN_AUDIENCE", cpis_cli::devkeys::AUDIENCE),
            kv("CPIS_TLS_INTERNAL_CA", path_str(&ca_path)),
            kv("CPIS_TLS_INTERNAL_CERT", path_str(&gateway_identity.cert)),
            kv("CPIS_TLS_INTERNAL_KEY", path_str(&gateway_identity.key)),
            kv("CPIS_GRACE_PERIOD", "5"),
        ];
        if options.public_tls {
            let public = ca.server(dir.path(), "gateway-public");
            env.push(kv("CPIS_TLS_CERT", path_str(&public.cert)));
            env.push(kv("CPIS_TLS_KEY", path_str(&public.key)));
            env.push(kv("CPIS_TLS_CLIENT_CA", path_str(&system_ca_path)));
        }
        env.extend(extra_env("gateway"));
        // Keys from an identity provider instead of the development key set (the gateway
        // takes one source only).
        if env
            .iter()
            .any(|(k, _)| k == "CPIS_OIDC_ISSUER" || k == "CPIS_JWKS_URL")
        {
            env.retain(|(k, _)| k != "CPIS_JWKS_FILE");
        }
        let child = spawn("gateway", &env, &dir.path().join("gateway.log"));
        processes.insert("gateway", Process { child, port, env });

        let system = System {
            dir,
            ca,
            system_ca,
            processes,
            _databases: databases,
            gateway_tls: options.public_tls,
            gateway_identity,
        };
        if options.wait_for_gateway {
            system.wait_ready().await;
        } else {
            system.wait_backends().await;
        }
        system
    }

    /// The gateway's internal identity (its client certificate to the backends).
    pub fn gateway_identity(&self) -> &Pem {
        &self.gateway_identity
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.processes["gateway"].port))
    }

    /// The gateway's log so far, for a failing assertion's message.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn tls_for(&self, identity: Option<&Pem>) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.pem))
            .domain_name("localhost");
        if let Some(p) = identity {
            config = config.identity(Identity::from_pem(
                std::fs::read(&p.cert).unwrap(),
                std::fs::read(&p.key).unwrap(),
            ));
        }
        config
    }

    /// A channel to the gateway (TLS when the system serves it, with `identity` if given).
    pub fn channel_as(&self, identity: Option<&Pem>) -> Channel {
        if self.gateway_tls {
            Endpoint::from_shared(format!(
                "https://localhost:{}",
                self.processes["gateway"].port
            ))
            .unwrap()
            .tls_config(self.tls_for(identity))
            .unwrap()
            .connect_lazy()
        } else {
            Endpoint::from_shared(format!("http://{}", self.gateway_addr()))
                .unwrap()
                .connect_lazy()
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel_as(None)
    }

    /// A channel straight to a backend, presenting `identity` (or none).
    pub fn backend_channel(&self, name: &str, identity: Option<&Pem>) -> Channel {
        Endpoint::from_shared(format!("https://localhost:{}", self.processes[name].port))
            .unwrap()
            .tls_config(self.tls_for(identity))
            .unwrap()
            .connect_lazy()
    }

    pub fn token(&self, user: &str, org: &str, role: &str, activities: &[&str]) -> String {
        self.token_for(user, org, role, activities, Duration::from_secs(3600))
    }

    /// A token that expires `ttl` from now.
    pub fn token_for(
        &self,
        user: &str,
        org: &str,
        role: &str,
        activities: &[&str],
        ttl: Duration,
    ) -> String {
        let args = cpis_cli::token::TokenArgs {
            user: user.into(),
            name: None,
            org: org.into(),
            role: role.into(),
            activities: activities.iter().map(|a| a.to_string()).collect(),
            extra_roles: Vec::new(),
            aal: 3,
            ttl,
            data_dir: self.dir.path().to_owned(),
        };
        cpis_cli::token::mint(&args).unwrap()
    }

    /// A token naming `identity` (its role profiles, its assurance level), valid for an hour.
    pub fn token_as(&self, identity: &cpis_cli::token::Identity) -> String {
        let keys = cpis_cli::devkeys::load(self.dir.path()).unwrap();
        cpis_cli::token::sign_identity(&keys, identity, Duration::from_secs(3600)).unwrap()
    }

    /// Registers each `(ods_code, kind)` as an onboarded organisation named after its code,
    /// as the national administrator.
    pub async fn onboard(
        &self,
        organisations: &[(&str, cpis_proto::gateway::OrganisationKind)],
    ) -> Result<(), tonic::Status> {
        use cpis_proto::gateway as pb;
        let admin = self.token("admin", "X26", "R0001", &["CPIS_ADMIN"]);
        let mut client = pb::administration_client::AdministrationClient::new(self.channel());
        for (ods, kind) in organisations {
            let request = pb::UpsertOrganisationRequest {
                ods_code: (*ods).into(),
                name: format!("Organisation {ods}"),
                kind: (*kind).into(),
                onboarded: true,
            };
            client
                .upsert_organisation(crate::with_token(request, &admin, Duration::from_secs(30)))
                .await?;
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Waits until every backend is SERVING (asked directly, as the gateway), then the gateway
    /// and its view of the backends (its `backends` health entry). The gateway itself is
    /// ready at once: readiness never follows the backends.
    pub async fn wait_ready(&self) {
        self.wait_backends().await;
        self.wait_serving("gateway", self.channel(), "").await;
        self.wait_serving("gateway", self.channel(), "backends")
            .await;
    }

    /// Waits until every backend is SERVING (asked directly, as the gateway).
    pub async fn wait_backends(&self) {
        for name in BACKENDS {
            let channel = self.backend_channel(name, Some(&self.gateway_identity));
            self.wait_serving(name, channel, "").await;
        }
    }

    /// The gateway's health (`""`), if it answers within a second.
    pub async fn gateway_health(&self) -> Option<ServingStatus> {
        status_of(self.channel(), "").await
    }

    async fn wait_serving(&self, name: &str, channel: Channel, service: &str) {
        for _ in 0..300 {
            if status_of(channel.clone(), service).await == Some(ServingStatus::Serving) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{name} never became SERVING ({service:?}):\n{}",
            self.log(name)
        );
    }

    /// The process id of `name` now (to show a process was not restarted).
    pub fn pid(&self, name: &str) -> u32 {
        self.processes[name].child.id()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, name: &str) {
        let p = self.processes.get_mut(name).unwrap();
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to a service's process.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.processes[name].child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for a process to exit on its own.
    pub fn wait_exit(&mut self, name: &str) -> std::process::ExitStatus {
        self.processes.get_mut(name).unwrap().child.wait().unwrap()
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let p = self.processes.get_mut(name).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        p.child.wait().unwrap()
    }

    /// Changes one environment variable of `name` for its next restart.
    pub fn set_env(&mut self, name: &str, key: &str, value: &str) {
        let env = &mut self.processes.get_mut(name).unwrap().env;
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts one more process of backend `name` (its configuration and database, a port of
    /// its own), then restarts the gateway balancing over every process of `name`. Returns the
    /// new replica's name, for `kill`, `pid` and `log`.
    pub async fn add_replica(&mut self, name: &'static str) -> &'static str {
        let n = self
            .processes
            .keys()
            .filter(|k| replica_of(k) == name)
            .count()
            + 1;
        let replica: &'static str = Box::leak(format!("{name}#{n}").into_boxed_str());
        let port = free_port();
        let mut env = self.processes[name].env.clone();
        env.retain(|(k, _)| k != "CPIS_LISTEN");
        env.push(kv("CPIS_LISTEN", format!("127.0.0.1:{port}")));
        let child = spawn(name, &env, &self.dir.path().join(format!("{replica}.log")));
        self.processes.insert(replica, Process { child, port, env });
        let mut ports: Vec<u16> = self
            .processes
            .iter()
            .filter(|(k, _)| replica_of(k) == name)
            .map(|(_, p)| p.port)
            .collect();
        ports.sort();
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("https://localhost:{p}"))
            .collect();
        let key = match name {
            "flag-service" => "CPIS_FLAG_URL",
            "attendance-service" => "CPIS_ATTENDANCE_URL",
            _ => "CPIS_ACCESS_URL",
        };
        self.set_env("gateway", key, &urls.join(","));
        let channel = self.backend_channel(replica, Some(&self.gateway_identity));
        self.wait_serving(replica, channel, "").await;
        self.restart("gateway").await;
        replica
    }

    /// Starts `name` again with the same configuration (same port, same database).
    pub async fn restart(&mut self, name: &'static str) {
        let log = self.dir.path().join(format!("{name}.log"));
        let p = self.processes.get_mut(name).unwrap();
        let _ = p.child.kill();
        let _ = p.child.wait();
        p.child = spawn(replica_of(name), &p.env, &log);
        self.wait_ready().await;
    }
}

/// The health `service` reports over `channel`, if it answers within a second.
async fn status_of(channel: Channel, service: &str) -> Option<ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(Duration::from_secs(1));
    HealthClient::new(channel)
        .check(request)
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

/// The backend a process (`flag-service`, or a replica `flag-service#2`) runs.
fn replica_of(process: &str) -> &str {
    process.split('#').next().unwrap_or(process)
}
