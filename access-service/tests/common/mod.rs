//! Shared by the integration tests: a migrated database, an in-process server, principals.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod conformance;

use access_service::{AccessArgs, AccessService, NAME};
use cpis_proto::access::access_control_client::AccessControlClient;
use cpis_proto::access::{DecideRequest, Principal};
use cpis_proto::gateway::Setting;
use platform::domain::{AccessKind, SettingType};
use platform::runtime::Component;
use platform::server::Running;
use platform::shutdown::{Shutdown, ShutdownTrigger};
use sea_orm::DatabaseConnection;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A migrated connection to a test database.
pub async fn migrated(url: &str) -> DatabaseConnection {
    platform::database::migrate::<access_service::migration::Migrator>(url, NAME)
        .await
        .expect("migrations");
    platform::database::connect(url).await.expect("connect")
}

pub struct Server {
    pub client: AccessControlClient<Channel>,
    pub running: Running,
    pub trigger: ShutdownTrigger,
    pub _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

/// Waits (on the health stream, not a timer) until `channel`'s server says SERVING.
pub async fn until_serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    while let Some(update) = stream.message().await.expect("health stream") {
        if update.status == ServingStatus::Serving as i32 {
            return;
        }
    }
    panic!("health stream ended before SERVING");
}

/// access-service in this process on `url`, serving on an ephemeral loopback port.
pub async fn start(url: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut args = AccessArgs::embedded(dir.path().to_path_buf());
    args.serve.database.database_url = Some(url.to_owned());
    let (trigger, shutdown) = Shutdown::new();
    let running = AccessService::start(args, shutdown).await.expect("start");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    until_serving(channel.clone()).await;
    Server {
        client: AccessControlClient::new(channel),
        running,
        trigger,
        _dir: dir,
    }
}

pub fn user(id: &str, ods: &str, activities: &[&str]) -> Principal {
    Principal {
        user_id: id.into(),
        ods_code: ods.into(),
        role_code: "R8000".into(),
        activities: activities.iter().map(|a| a.to_string()).collect(),
        assurance_level: 3,
        ..Default::default()
    }
}

pub fn admin() -> Principal {
    user("admin", "X26", &["CPIS_ADMIN", "CPIS_AUDIT"])
}

/// A request carrying the forwarded principal, as the gateway sends it.
pub fn on_behalf<T>(principal: &Principal, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    platform::principal::attach(request.metadata_mut(), principal);
    request
}

pub fn lookup(principal: Principal, kind: AccessKind, site: &str) -> DecideRequest {
    let setting_type = match kind {
        AccessKind::Unscheduled => SettingType::EmergencyDepartment,
        AccessKind::Scheduled => SettingType::GpPractice,
    };
    DecideRequest {
        principal: Some(principal),
        action: "LookupChild".into(),
        nhs_number: "9434765919".into(),
        access_kind: kind.into(),
        setting: Some(Setting {
            ods_code: site.into(),
            setting_type: setting_type.into(),
        }),
        ..Default::default()
    }
}

pub fn action(principal: Principal, action: &str) -> DecideRequest {
    DecideRequest {
        principal: Some(principal),
        action: action.into(),
        ..Default::default()
    }
}

pub async fn organisation(db: &DatabaseConnection, ods: &str, kind: &str, onboarded: bool) {
    let kind = access_service::rules::OrganisationKind::parse(kind).expect("kind");
    let request = cpis_proto::gateway::UpsertOrganisationRequest {
        ods_code: ods.into(),
        name: format!("Organisation {ods}"),
        kind: i32::from(kind),
        onboarded,
    };
    let valid = platform::requests::upsert_organisation(&request).expect("a valid organisation");
    access_service::storage::organisations::upsert(db, &valid, request.onboarded)
        .await
        .expect("upsert organisation");
}

/// The chain head's sequence, as committed.
pub async fn head(db: &DatabaseConnection) -> u64 {
    use sea_orm::EntityTrait;
    access_service::entities::audit_head::Entity::find_by_id(1)
        .one(db)
        .await
        .unwrap()
        .unwrap()
        .sequence as u64
}

pub async fn execute(db: &DatabaseConnection, sql: &str) {
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(sql).await.expect(sql);
}
