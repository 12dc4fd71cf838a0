//! Starting real registries for tests and talking to them through the generated client.

#![allow(dead_code)]

use cpis_proto::access::Principal;
use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
use cpis_proto::flag::{AccessRecord, GetFlagsRequest, GetFlagsResponse};
use cpis_proto::gateway::{
    FlagRecord, FlagType, SettingType, UploadFlagsRequest, UploadFlagsResponse,
};
use flag_service::{FlagArgs, FlagService};
use platform::domain::{NhsNumber, to_timestamp};
use platform::runtime::Component;
use platform::server::Running;
use platform::shutdown::{Shutdown, ShutdownTrigger};
use platform::testing::TestDatabase;
use sea_orm::DatabaseConnection;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub type Client = FlagRegistryClient<Channel>;

#[derive(Clone, Debug)]
pub enum CacheMode {
    Off,
    Local,
    /// Redis at this URL with this key prefix (tests share a Redis: each gets its own keys).
    Redis(String, String),
}

/// One running registry.
pub struct Registry {
    pub client: Client,
    pub addr: std::net::SocketAddr,
    pub db: DatabaseConnection,
    trigger: ShutdownTrigger,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start(db: &TestDatabase, cache: CacheMode) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut args = FlagArgs::embedded(dir.path().to_path_buf());
        args.serve.database.database_url = Some(db.url.clone());
        match cache {
            CacheMode::Off => args.local_cache = false,
            CacheMode::Local => args.local_cache = true,
            CacheMode::Redis(url, prefix) => {
                args.local_cache = false;
                args.serve.redis_url = Some(url);
                args.cache_prefix = prefix;
            }
        }
        let (trigger, shutdown) = Shutdown::new();
        let running = FlagService::start(args, shutdown).await.unwrap();
        let addr = running.addr;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        wait_until_serving(channel.clone()).await;
        let conn = sea_orm::Database::connect(&db.url).await.unwrap();
        Registry {
            client: FlagRegistryClient::new(channel),
            addr,
            db: conn,
            trigger,
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub async fn stop(mut self) {
        self.trigger.fire();
        if let Some(running) = self.running.take() {
            let _ = running.wait().await;
        }
    }

    pub fn fire_shutdown(&self) {
        self.trigger.fire();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

/// Health SERVING means migrations ran and the database answers.
pub async fn wait_until_serving(channel: Channel) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "cpis.flag.v1.FlagRegistry".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(1)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The databases every storage test runs on.
pub async fn databases(prefix: &str) -> Vec<TestDatabase> {
    platform::testing::all(prefix).await
}

static NEXT_NUMBER: AtomicU32 = AtomicU32::new(0);

/// Fresh valid NHS numbers from the never-issued 999 range, unique within the test run and
/// spread across runs (a shared Redis may still hold keys of an earlier run).
pub fn numbers(count: usize) -> Vec<String> {
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        999_000_001 + (nanos % 500_000)
    });
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let i = NEXT_NUMBER.fetch_add(1, Ordering::Relaxed);
        let nine = start + (i % 499_000);
        if let Some(n) = NhsNumber::from_first_nine(nine) {
            out.push(n.as_str().to_owned());
        }
    }
    out
}

pub fn number() -> String {
    numbers(1).remove(0)
}

pub fn la(ods: &str) -> Principal {
    Principal {
        user_id: format!("case-worker-{ods}"),
        ods_code: ods.into(),
        role_code: "R0001".into(),
        activities: vec!["CPIS_LA_MANAGE".into()],
        organisation_name: format!("Council {ods}"),
        ..Default::default()
    }
}

/// A clinician of a trust allowed to make notifying (and silent) lookups, as the gateway
/// forwards one with a lookup's reads.
pub fn clinician() -> Principal {
    Principal {
        user_id: "dr-jones".into(),
        ods_code: "RQX".into(),
        role_code: "R8000".into(),
        activities: vec!["B0107".into(), "B0170".into()],
        ..Default::default()
    }
}

pub fn admin() -> Principal {
    Principal {
        user_id: "admin-1".into(),
        ods_code: "X26".into(),
        role_code: "R8000".into(),
        activities: vec!["CPIS_ADMIN".into()],
        organisation_name: "NHS England".into(),
        ..Default::default()
    }
}

pub fn signed<T>(message: T, principal: &Principal) -> Request<T> {
    let mut request = Request::new(message);
    platform::principal::attach(request.metadata_mut(), principal);
    request
}

pub fn record(nhs: &str, flag_type: FlagType, start: &str, end: &str, due: &str) -> FlagRecord {
    FlagRecord {
        nhs_number: nhs.into(),
        flag_type: flag_type.into(),
        start_date: start.into(),
        end_date: end.into(),
        due_date: due.into(),
        emergency_phone: "0161 234 5678".into(),
        office_hours_phone: "0161 234 0000".into(),
        email: "duty@council.example".into(),
    }
}

pub fn cpp(nhs: &str, start: &str) -> FlagRecord {
    record(nhs, FlagType::Cpp, start, "", "")
}

/// Uploads `batches` as one stream (one message per batch).
pub async fn upload(
    client: &Client,
    principal: &Principal,
    upload_id: &str,
    batches: Vec<Vec<FlagRecord>>,
) -> Result<UploadFlagsResponse, Status> {
    let messages: Vec<UploadFlagsRequest> = batches
        .into_iter()
        .map(|records| UploadFlagsRequest {
            upload_id: upload_id.into(),
            records,
        })
        .collect();
    let request = signed(tokio_stream::iter(messages), principal);
    client
        .clone()
        .upload_flags(request)
        .await
        .map(|r| r.into_inner())
}

pub fn instant(rfc3339: &str) -> prost_types::Timestamp {
    to_timestamp(
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&chrono::Utc),
    )
}

pub fn now() -> prost_types::Timestamp {
    to_timestamp(chrono::Utc::now())
}

pub async fn get_flags(
    client: &Client,
    numbers: &[String],
    as_of: prost_types::Timestamp,
) -> Result<GetFlagsResponse, Status> {
    client
        .clone()
        .get_flags(signed(
            GetFlagsRequest {
                nhs_numbers: numbers.to_vec(),
                as_of: Some(as_of),
                notify: None,
            },
            &clinician(),
        ))
        .await
        .map(|r| r.into_inner())
}

pub fn access(lookup_id: &str) -> AccessRecord {
    AccessRecord {
        lookup_id: lookup_id.into(),
        user_id: "dr-jones".into(),
        role_code: "R8000".into(),
        site_ods_code: "RQX01".into(),
        organisation_name: "Example Hospital".into(),
        setting_type: SettingType::EmergencyDepartment.into(),
        accessed_at: Some(now()),
    }
}

pub async fn notifying_read(
    client: &Client,
    nhs: &str,
    lookup_id: &str,
) -> Result<GetFlagsResponse, Status> {
    client
        .clone()
        .get_flags(signed(
            GetFlagsRequest {
                nhs_numbers: vec![nhs.into()],
                as_of: Some(now()),
                notify: Some(access(lookup_id)),
            },
            &clinician(),
        ))
        .await
        .map(|r| r.into_inner())
}

/// The field paths of an INVALID_ARGUMENT's BadRequest.
pub fn violations(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|f| f.field).collect())
        .unwrap_or_default()
}

/// Waits for a condition checked by `probe`, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
