//! Encrypted datastores, verified (issue 18): a PostgreSQL and a Redis of the test's own,
//! serving TLS with certificates made by rcgen, are reached with their certificates checked
//! against the CA file setting (`CPIS_DATASTORE_CA_FILE`), and refused under another CA; with
//! `CPIS_REQUIRE_DATASTORE_TLS` on, a service serves on verified TLS URLs and will not start
//! on a URL that could go without. Never touches the shared servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::certs::Ca;
use common::infra::{PrivatePostgres, PrivateRedis, create_databases};
use common::{binary, free_port, wait_for_health};
use platform::config::DatastoreTlsArgs;
use platform::datastore::DatastoreTls;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

fn needs_servers() {
    assert!(
        common::infra::can_run_private_postgres(),
        "this test runs as root with PostgreSQL server binaries installed (it starts its own cluster)"
    );
    assert!(
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test starts its own redis-server, which is not on PATH"
    );
}

/// Two CAs: the one that issued the servers' certificates, and one nobody used.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    wrong_ca_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("datastore CA");
        let ca_file = ca.write(dir.path(), "datastore-ca");
        let wrong_ca_file = Ca::new("some other CA").write(dir.path(), "wrong-ca");
        Pki {
            dir,
            ca,
            ca_file,
            wrong_ca_file,
        }
    }

    fn tls(ca_file: &Path) -> DatastoreTls {
        DatastoreTls::from_args(&DatastoreTlsArgs {
            datastore_ca_file: Some(ca_file.to_owned()),
            require_datastore_tls: true,
        })
        .unwrap()
    }
}

async fn ssl_of_this_session(conn: &sea_orm::DatabaseConnection) -> Result<bool, sea_orm::DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await?
        .expect("a row for this backend");
    row.try_get::<bool>("", "ssl")
}

#[tokio::test]
async fn postgres_with_tls_connects_verifying_its_certificate_and_refuses_a_wrong_ca() {
    needs_servers();
    let pki = Pki::new();
    let server = pki.ca.server(pki.dir.path(), "postgres");
    let postgres = PrivatePostgres::start_tls(&server);
    let url = postgres.verify_full_url("postgres");

    let conn = platform::database::connect_with(&url, &Pki::tls(&pki.ca_file))
        .await
        .unwrap();
    assert!(
        ssl_of_this_session(&conn).await.unwrap(),
        "the session is encrypted"
    );
    let _ = conn.close().await;

    let wrong = platform::database::connect_with(&url, &Pki::tls(&pki.wrong_ca_file))
        .await
        .unwrap();
    let refused = ssl_of_this_session(&wrong)
        .await
        .expect_err("a server certificate from another CA is refused");
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );

    // `sslrootcert=` in the URL works as the setting does.
    let in_url = format!("{url}&sslrootcert={}", pki.ca_file.display());
    let conn = platform::database::connect_with(&in_url, &DatastoreTls::default())
        .await
        .unwrap();
    assert!(ssl_of_this_session(&conn).await.unwrap());
    let _ = conn.close().await;
}

#[tokio::test]
async fn redis_with_tls_connects_verifying_its_certificate_and_refuses_a_wrong_ca() {
    needs_servers();
    let pki = Pki::new();
    let server = pki.ca.server(pki.dir.path(), "redis");
    let redis = PrivateRedis::start_tls(&server, &pki.ca_file).await;
    assert!(redis.url().starts_with("rediss://localhost:"));

    let client = platform::cache::client(&redis.url(), &Pki::tls(&pki.ca_file)).unwrap();
    let mut conn = platform::cache::connect(client).await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    let client = platform::cache::client(&redis.url(), &Pki::tls(&pki.wrong_ca_file)).unwrap();
    let Err(refused) = platform::cache::connect(client).await else {
        panic!("a server certificate from another CA is refused");
    };
    assert!(
        refused.to_string().to_lowercase().contains("certificate")
            || refused.to_string().contains("UnknownIssuer"),
        "{refused}"
    );
}

/// flag-service alone, trusting loopback (no gateway needed), with TLS required.
fn flag_service(dir: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.join(format!("flag-service-{port}.log"))).unwrap();
    Command::new(binary("flag-service"))
        .env_remove("CPIS_DATABASE_URL")
        .env_remove("CPIS_REDIS_URL")
        .env("RUST_LOG", "info")
        .env("CPIS_DATA_DIR", dir.join("data"))
        .env("CPIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("CPIS_INSECURE_INTERNAL", "true")
        .env("CPIS_REQUIRE_DATASTORE_TLS", "true")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn log_of(dir: &Path, port: u16) -> String {
    std::fs::read_to_string(dir.join(format!("flag-service-{port}.log"))).unwrap_or_default()
}

/// Waits (up to 20 s) for the process to end; one still running is killed and fails the test.
fn exit_of(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what}: flag-service did not refuse to start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_requiring_datastore_tls_serves_on_verified_tls_and_will_not_start_on_plaintext()
{
    needs_servers();
    let pki = Pki::new();
    let postgres = PrivatePostgres::start_tls(&pki.ca.server(pki.dir.path(), "postgres"));
    create_databases(&postgres.url("postgres"), &["flag-service"]).await;
    let redis =
        PrivateRedis::start_tls(&pki.ca.server(pki.dir.path(), "redis"), &pki.ca_file).await;
    let ca_file = pki.ca_file.display().to_string();
    let database = postgres.verify_full_url("flag-service");
    let cache = redis.url();
    let dir = pki.dir.path();

    let port = free_port();
    let mut service = flag_service(
        dir,
        port,
        &[
            ("CPIS_DATABASE_URL", &database),
            ("CPIS_REDIS_URL", &cache),
            ("CPIS_DATASTORE_CA_FILE", &ca_file),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_health(
        addr,
        cpis_proto::service_names::FLAG_REGISTRY,
        ServingStatus::Serving,
    )
    .await;
    let start = Instant::now();
    while !log_of(dir, port).contains("flag cache: connected to Redis") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "flag-service never reached Redis over TLS: {}",
            log_of(dir, port)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every connection flag-service holds to its database is encrypted.
    let observer = platform::database::connect_with(
        &postgres.verify_full_url("postgres"),
        &Pki::tls(&pki.ca_file),
    )
    .await
    .unwrap();
    let row = observer
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n, coalesce(bool_and(s.ssl), false) AS all_ssl \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'flag-service'",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    assert!(n > 0, "flag-service holds database connections");
    assert!(
        row.try_get::<bool>("", "all_ssl").unwrap(),
        "all of flag-service's database connections are TLS"
    );
    let _ = service.kill();
    let _ = service.wait();

    // Each URL that could connect without verified TLS stops the start, saying what to change.
    let plain_database = postgres.url("flag-service");
    let require_only = format!("{plain_database}?sslmode=require");
    let plain_cache = format!("redis://127.0.0.1:{}", redis.port);
    let sqlite = format!("sqlite://{}/f.db?mode=rwc", dir.display());
    for (what, database, cache, says) in [
        ("no sslmode", &plain_database, &cache, "sslmode=verify-full"),
        (
            "sslmode=require",
            &require_only,
            &cache,
            "sslmode=verify-full",
        ),
        ("sqlite", &sqlite, &cache, "PostgreSQL"),
        ("redis://", &database, &plain_cache, "rediss://"),
    ] {
        let port = free_port();
        let mut refused = flag_service(
            dir,
            port,
            &[
                ("CPIS_DATABASE_URL", database),
                ("CPIS_REDIS_URL", cache),
                ("CPIS_DATASTORE_CA_FILE", &ca_file),
            ],
        );
        let status = exit_of(&mut refused, what);
        let log = log_of(dir, port);
        assert!(!status.success(), "{what}: {log}");
        assert!(
            log.contains("CPIS_REQUIRE_DATASTORE_TLS") && log.contains(says),
            "{what}: the refusal names the setting and the fix: {log}"
        );
    }
}
