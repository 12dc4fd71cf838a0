//! Health follows the database: `NOT_SERVING` while it cannot be reached, `SERVING` once it
//! answers and the migrations ran, and `NOT_SERVING` again when it goes away.

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
async fn health_is_not_serving_while_the_database_is_unreachable_and_serving_once_it_answers() {
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

    // Cut it off again (new connections refused, open ones dropped by the pool's failures).
    forwarder.abort();
    let _ = forwarder.await;
    drop(db);
    wait_for(running.addr, ServingStatus::NotServing).await;

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

mod one {
    use sea_orm_migration::prelude::*;

    pub struct Migrator;

    #[async_trait::async_trait]
    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(CreateProbe)]
        }
    }

    #[derive(DeriveMigrationName)]
    struct CreateProbe;

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
