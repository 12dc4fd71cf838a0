//! Shared fixtures: migrated databases on every configured backend, attendances to record,
//! and a served attendance-service with a client.

use attendance_service::attendance::Attendance;
use attendance_service::migration::Migrator;
use attendance_service::storage::Attendances;
use attendance_service::{AttendanceArgs, AttendanceService, NAME};
use chrono::{DateTime, TimeZone, Utc};
use cpis_proto::attendance::attendance_log_client::AttendanceLogClient;
use platform::domain::{NhsNumber, OdsCode, SettingType};
use platform::runtime::Component;
use platform::server::Running;
use platform::shutdown::{Shutdown, ShutdownTrigger};
use platform::testing::TestDatabase;
use sea_orm::DatabaseConnection;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A migrated database and the storage over it. `db` is declared last so the connection
/// closes before the database is dropped.
pub struct Store {
    pub conn: DatabaseConnection,
    pub attendances: Attendances,
    pub db: TestDatabase,
}

/// One migrated store per configured backend (SQLite always, PostgreSQL when configured).
pub async fn stores(prefix: &str) -> Vec<Store> {
    let mut out = Vec::new();
    for db in platform::testing::all(prefix).await {
        platform::database::migrate::<Migrator>(&db.url, NAME)
            .await
            .expect("migrate");
        let conn = platform::database::connect(&db.url).await.expect("connect");
        out.push(Store {
            attendances: Attendances::new(conn.clone()),
            conn,
            db,
        });
    }
    out
}

/// A fixed clock for window tests: a Saturday in British Summer Time, so that "30 days" of
/// 24 hours and 30 calendar days in England differ across the clock change.
pub fn as_of() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 4, 12, 10, 30, 0).unwrap()
}

/// The first valid NHS number whose nine leading digits are `first_nine` or just above.
pub fn nhs(first_nine: u32) -> NhsNumber {
    (first_nine..)
        .find_map(NhsNumber::from_first_nine)
        .expect("a valid number nearby")
}

/// The child most tests look at.
pub fn child() -> NhsNumber {
    nhs(943_476_591)
}

pub fn attendance(lookup_id: &str, who: NhsNumber, at: DateTime<Utc>) -> Attendance {
    Attendance {
        lookup_id: lookup_id.to_owned(),
        nhs_number: who,
        attended_at: at,
        site_ods_code: OdsCode::parse("RQX01").unwrap(),
        organisation_name: "Homerton Healthcare".to_owned(),
        setting_type: SettingType::EmergencyDepartment,
        user_id: "user-1".to_owned(),
        role_code: "R8000".to_owned(),
    }
}

/// A served attendance-service on `127.0.0.1:0` over the given database.
pub struct Served {
    pub client: AttendanceLogClient<Channel>,
    pub running: Running,
    pub trigger: ShutdownTrigger,
    _dir: tempfile::TempDir,
}

pub async fn serve(db: &TestDatabase, adjust: impl FnOnce(&mut AttendanceArgs)) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut args = AttendanceArgs::embedded(dir.path().to_owned());
    args.serve.database.database_url = Some(db.url.clone());
    adjust(&mut args);
    let (trigger, shutdown) = Shutdown::new();
    let running = AttendanceService::start(args, shutdown)
        .await
        .expect("start");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    wait_until_serving(channel.clone()).await;
    Served {
        client: AttendanceLogClient::new(channel),
        running,
        trigger,
        _dir: dir,
    }
}

/// Waits on the health stream (no polling) until the service says SERVING.
async fn wait_until_serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: cpis_proto::service_names::ATTENDANCE_LOG.to_owned(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let wait = async {
        while let Some(update) = stream.message().await.expect("health stream") {
            if update.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("health stream ended before SERVING");
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect("SERVING within 30 s");
}

/// A clinician allowed to make notifying lookups, as the gateway forwards one.
pub fn clinician() -> cpis_proto::access::Principal {
    cpis_proto::access::Principal {
        user_id: "user-7".into(),
        ods_code: "RQX".into(),
        role_code: "R8001".into(),
        activities: vec!["B0107".into()],
        ..Default::default()
    }
}

/// `message` as the gateway sends it, with the clinician's principal.
pub fn as_clinician<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    platform::principal::attach(request.metadata_mut(), &clinician());
    request
}
