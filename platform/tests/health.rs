//! Readiness means "this pod can serve its own calls": `NOT_SERVING` until the database could
//! be reached once and the binary's migrations are present (newer ones tolerated, checked
//! without DDL), then `SERVING` until shutdown, whatever the database does meanwhile (its
//! health goes to metrics; calls answer UNAVAILABLE while it is away).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use platform::config::ServeArgs;
use platform::runtime::{BackendContext, BackendService, Component};
use platform::shutdown::Shutdown;
use sea_orm_migration::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct NoMigrations;

#[async_trait::async_trait]
impl MigratorTrait for NoMigrations {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![]
    }
}

const SERVICE: &str = "cpis.test.v1.Probe";

/// A backend serving nothing but health, with the migrations `M`.
struct Probe<M>(std::marker::PhantomData<M>);

impl<M: MigratorTrait + Send + Sync + 'static> BackendService for Probe<M> {
    const NAME: &'static str = "probe";
    const ABOUT: &'static str = "a probe";
    const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
    const SERVICES: &'static [&'static str] = &[SERVICE];
    type Migrator = M;
    type Args = ServeArgs;

    fn serve_args(args: &ServeArgs) -> &ServeArgs {
        args
    }

    fn routes(_: &ServeArgs, _: BackendContext) -> platform::Result<Routes> {
        Ok(Routes::builder().routes())
    }
}

async fn status(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

async fn wait_for(addr: SocketAddr, want: ServingStatus) {
    for _ in 0..100 {
        if status(addr, SERVICE).await == Some(want) && status(addr, "").await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

/// A TCP forwarder standing in for the database's network path, which the test opens and cuts.
async fn forward(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn postgres_target(server: &str) -> SocketAddr {
    let authority = server
        .split("://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

#[tokio::test]
async fn health_waits_for_the_database_once_then_stays_serving_through_a_blip() {
    let Some(db) = platform::testing::postgres("health").await else {
        eprintln!("CPIS_TEST_POSTGRES_URL not set: this test needs a database server to cut off");
        return;
    };
    let target = postgres_target(&db.url);
    // A port with nothing behind it yet: the database is unreachable.
    let proxy_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut url = db.url.clone();
    url = url.replacen(
        &format!("{}:{}", "127.0.0.1", target.port()),
        &format!("127.0.0.1:{proxy_port}"),
        1,
    );
    url = url.replacen(
        &format!("localhost:{}", target.port()),
        &format!("127.0.0.1:{proxy_port}"),
        1,
    );
    assert!(
        url.contains(&proxy_port.to_string()),
        "could not point {url} at the proxy"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::embedded(dir.path().to_owned());
    args.database.database_url = Some(url);
    let (trigger, shutdown) = Shutdown::new();
    let running = Probe::<NoMigrations>::start(args.clone(), shutdown)
        .await
        .expect("a service starts even when its database is down");

    // Give it time to try and fail a few times: it must stay NOT_SERVING.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(running.addr, SERVICE).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        status(running.addr, "").await,
        Some(ServingStatus::NotServing)
    );

    // The database becomes reachable.
    let proxy = TcpListener::bind(("127.0.0.1", proxy_port)).await.unwrap();
    let forwarder = tokio::spawn(forward(proxy, target));
    wait_for(running.addr, ServingStatus::Serving).await;

    // Cut it off again (new connections refused, open ones dropped by the pool's failures):
    // the pod stays in the load balancer.
    forwarder.abort();
    let _ = forwarder.await;
    drop(db);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        status(running.addr, "").await,
        Some(ServingStatus::Serving),
        "a database blip took the pod out of readiness"
    );

    trigger.fire();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn health_is_serving_once_sqlite_is_migrated_and_not_serving_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs::embedded(dir.path().to_owned());
    let (trigger, shutdown) = Shutdown::new();
    let running = Probe::<NoMigrations>::start(args.clone(), shutdown)
        .await
        .unwrap();
    wait_for(running.addr, ServingStatus::Serving).await;
    assert!(
        dir.path().join("probe.db").exists(),
        "the embedded default is a SQLite file in the data directory"
    );
    trigger.fire();
    running.wait().await.unwrap();
}

mod two {
    use super::one::CreateProbe;
    use sea_orm_migration::prelude::*;

    /// The next release: one more migration than `one`.
    pub struct Migrator;

    #[async_trait::async_trait]
    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(CreateProbe), Box::new(AddColumn)]
        }
    }

    // Named by hand: the derive names a migration after its file, and both live in this one.
    struct AddColumn;

    impl MigrationName for AddColumn {
        fn name(&self) -> &str {
            "m0002_add_column"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for AddColumn {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(
                    Table::alter()
                        .table("probe")
                        .add_column(ColumnDef::new("extra").integer().null())
                        .to_owned(),
                )
                .await
        }
    }
}

#[tokio::test]
async fn a_rolled_back_binary_against_a_newer_schema_becomes_ready() {
    for mode in [
        platform::config::MigrateMode::Off,
        platform::config::MigrateMode::Auto,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs::embedded(dir.path().to_owned());
        args.migrate = mode;
        // The newer release's migration Job ran.
        let url = platform::database::database_url(&args.database, "probe").unwrap();
        platform::database::migrate::<two::Migrator>(&url, "probe")
            .await
            .unwrap();
        // A pod of the previous release (re)starts on it, and so does its migration Job.
        platform::database::migrate::<one::Migrator>(&url, "probe")
            .await
            .expect("an older release's Job is a no-op on a newer schema");
        let (trigger, shutdown) = Shutdown::new();
        let running = Probe::<one::Migrator>::start(args.clone(), shutdown)
            .await
            .unwrap();
        wait_for(running.addr, ServingStatus::Serving).await;
        trigger.fire();
        running.wait().await.unwrap();
    }
}

#[tokio::test]
async fn a_serving_pod_checks_its_schema_without_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::embedded(dir.path().to_owned());
    args.migrate = platform::config::MigrateMode::Off;
    let (trigger, shutdown) = Shutdown::new();
    let running = Probe::<one::Migrator>::start(args.clone(), shutdown)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(running.addr, "").await,
        Some(ServingStatus::NotServing)
    );
    // sea-orm's own listing of pending migrations creates its table: this check must not.
    let url = platform::database::database_url(&args.database, "probe").unwrap();
    let conn = platform::database::connect(&url).await.unwrap();
    use sea_orm::ConnectionTrait;
    let tables = conn
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table'",
        ))
        .await
        .unwrap();
    assert!(tables.is_empty(), "a serving pod created tables");
    trigger.fire();
    running.wait().await.unwrap();
}

mod one {
    use sea_orm_migration::prelude::*;

    pub struct Migrator;

    #[async_trait::async_trait]
    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(CreateProbe)]
        }
    }

    pub struct CreateProbe;

    impl MigrationName for CreateProbe {
        fn name(&self) -> &str {
            "m0001_create_probe"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for CreateProbe {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table("probe")
                        .col(ColumnDef::new("id").integer().not_null().primary_key())
                        .to_owned(),
                )
                .await
        }
    }
}

#[tokio::test]
async fn with_migrate_off_health_waits_for_the_migration_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::embedded(dir.path().to_owned());
    args.migrate = platform::config::MigrateMode::Off;
    let (trigger, shutdown) = Shutdown::new();
    let running = Probe::<one::Migrator>::start(args.clone(), shutdown)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(running.addr, "").await,
        Some(ServingStatus::NotServing),
        "served before its schema existed"
    );

    // What `probe migrate` (the Kubernetes Job) does:
    let url = platform::database::database_url(&args.database, "probe").unwrap();
    platform::database::migrate::<one::Migrator>(&url, "probe")
        .await
        .unwrap();
    wait_for(running.addr, ServingStatus::Serving).await;
    trigger.fire();
    running.wait().await.unwrap();
}
