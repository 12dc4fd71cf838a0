//! Private infrastructure a fault test may break at will, never the shared servers: a
//! PostgreSQL cluster of its own (initdb on a free port, stopped like a crash and started
//! again), a Redis of its own, either of them serving TLS only with a certificate the test
//! made, and a TCP proxy in front of PostgreSQL that can cut every connection at once.

use super::certs::Pem;
use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The newest installed PostgreSQL server binaries (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no initdb under /usr/lib/postgresql")
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL cluster owned by this test (trust authentication, loopback only).
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        Self::start_with(None)
    }

    /// A cluster with `ssl = on`, serving `server`'s certificate (plaintext connections are
    /// still accepted: a client that asks for no TLS gets none, as on most servers).
    pub fn start_tls(server: &Pem) -> PrivatePostgres {
        Self::start_with(Some(server))
    }

    fn start_with(tls: Option<&Pem>) -> PrivatePostgres {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("cpis-faults-pg-")
            .tempdir()
            .unwrap();
        for sub in ["data", "socket"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        // initdb refuses to run as root: the cluster belongs to the postgres user.
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()),
            "chown the cluster directory",
        );
        run(
            Command::new("chmod").arg("0755").arg(dir.path()),
            "chmod the cluster directory",
        );
        let pg = PrivatePostgres {
            bin,
            port: free_port(),
            dir,
        };
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg.bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(pg.data()),
            "initdb",
        );
        if let Some(server) = tls {
            pg.serve_tls(server);
        }
        pg.start_server();
        pg
    }

    /// Copies the certificate and key into the cluster (the key owned by postgres, mode 0600,
    /// as the server insists) and turns TLS on.
    fn serve_tls(&self, server: &Pem) {
        let cert = self.data().join("server.crt");
        let key = self.data().join("server.key");
        std::fs::copy(&server.cert, &cert).unwrap();
        std::fs::copy(&server.key, &key).unwrap();
        run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cert)
                .arg(&key),
            "chown the server certificate",
        );
        run(
            Command::new("chmod").arg("0600").arg(&key),
            "chmod the server key",
        );
        let conf = format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cert.display(),
            key.display()
        );
        let mut text = std::fs::read_to_string(self.data().join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(self.data().join("postgresql.conf"), text).unwrap();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .stdout(Stdio::null());
        c
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().join("socket").display()
        );
        run(
            self.pg_ctl()
                .args(["-w", "-t", "60", "-l"])
                .arg(self.dir.path().join("server.log"))
                .args(["-o", &options, "start"]),
            "pg_ctl start",
        );
    }

    /// Stops the server the way a crash does (`immediate`: no checkpoint, recovery on start).
    pub fn crash(&self) {
        run(
            self.pg_ctl().args(["-w", "-m", "immediate", "stop"]),
            "pg_ctl stop",
        );
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL that insists on TLS and checks the certificate and its name (`localhost`).
    pub fn verify_full_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?sslmode=verify-full",
            self.port
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).output();
    }
}

/// Creates `names` as databases on the server at `admin_url`.
pub async fn create_databases(admin_url: &str, names: &[&str]) {
    use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
    let admin = Database::connect(admin_url).await.unwrap();
    for name in names {
        admin
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("CREATE DATABASE \"{name}\""),
            ))
            .await
            .unwrap();
    }
    let _ = admin.close().await;
}

/// A Redis server owned by this test, without persistence: a restart empties it.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    /// TLS only (no plaintext port): the server's certificate and the CA file it names.
    tls: Option<(Pem, PathBuf)>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        Self::start_with(None).await
    }

    /// A Redis speaking TLS only, on `port`, with `server`'s certificate; `ca` is the CA file
    /// redis-server requires (clients are not asked for certificates).
    pub async fn start_tls(server: &Pem, ca: &Path) -> PrivateRedis {
        Self::start_with(Some((server.clone(), ca.to_owned()))).await
    }

    async fn start_with(tls: Option<(Pem, PathBuf)>) -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: free_port(),
            child: None,
            tls,
        };
        redis.start_server().await;
        redis
    }

    pub async fn start_server(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((server, ca)) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&server.cert)
                .arg("--tls-key-file")
                .arg(&server.key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    /// SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:port`, or `rediss://localhost:port` (the certificate's name) for TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy on a free loopback port to `upstream`, whose connections can all be cut.
pub struct CutProxy {
    pub port: u16,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl CutProxy {
    pub async fn start(upstream: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let registry = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let relay = tokio::spawn(async move {
                    // Upstream down: the client's connection closes at once, as a refusal.
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut open = registry.lock().unwrap();
                open.retain(|h| !h.is_finished());
                open.push(relay.abort_handle());
            }
        })
        .abort_handle();
        CutProxy {
            port,
            connections,
            accept,
        }
    }

    /// Drops every open connection (both ends see it close); new ones are accepted as before.
    pub fn cut(&self) -> usize {
        let open: Vec<AbortHandle> = std::mem::take(&mut *self.connections.lock().unwrap());
        let live = open.iter().filter(|h| !h.is_finished()).count();
        for h in open {
            h.abort();
        }
        live
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Whether this process may run a private PostgreSQL (it must be root to hand the cluster to
/// the postgres user).
pub fn can_run_private_postgres() -> bool {
    Path::new("/usr/lib/postgresql").exists()
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
