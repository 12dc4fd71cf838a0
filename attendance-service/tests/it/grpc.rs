//! The AttendanceLog service as the gateway meets it: through the generated tonic client
//! against the served service, on SQLite and PostgreSQL.

use crate::support::{as_clinician, as_of, child, clinician, nhs, serve, stores};
use attendance_service::Handlers;
use chrono::Duration;
use cpis_proto::attendance::attendance_log_server::AttendanceLog;
use cpis_proto::attendance::{RecordAttendanceRequest, SummarizeAttendancesRequest};
use cpis_proto::gateway::SettingType;
use platform::domain::to_timestamp;
use platform::principal::PeerTrust;
use platform::runtime::BackendContext;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

fn record_request(
    lookup_id: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Request<RecordAttendanceRequest> {
    let mut request = Request::new(RecordAttendanceRequest {
        lookup_id: lookup_id.into(),
        nhs_number: child().as_str().into(),
        attended_at: Some(to_timestamp(at)),
        site_ods_code: "rqx01".into(),
        organisation_name: "Homerton Healthcare".into(),
        setting_type: SettingType::UrgentTreatmentCentre as i32,
        user_id: "user-7".into(),
        role_code: "R8001".into(),
    });
    // The gateway forwards the principal the lookup was decided for.
    platform::principal::attach(request.metadata_mut(), &clinician());
    request
}

fn summary_request(numbers: Vec<String>, exclude: &str) -> SummarizeAttendancesRequest {
    SummarizeAttendancesRequest {
        nhs_numbers: numbers,
        as_of: Some(to_timestamp(as_of())),
        exclude_lookup_id: exclude.into(),
    }
}

fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn record_then_summarize_through_the_served_service() {
    for db in platform::testing::all("grpc").await {
        let label = db.label();
        let served = serve(&db, |_| {}).await;
        let mut client = served.client.clone();
        let earlier = client
            .record_attendance(record_request("l-earlier", as_of() - Duration::days(10)))
            .await
            .unwrap()
            .into_inner();
        assert!(earlier.created, "{label}");
        let current = client
            .record_attendance(record_request("l-current", as_of()))
            .await
            .unwrap()
            .into_inner();
        assert!(current.created, "{label}");
        let retry = client
            .record_attendance(record_request("l-current", as_of()))
            .await
            .unwrap()
            .into_inner();
        assert!(!retry.created, "{label}: a retry stores nothing");

        let spaced = "943 476 5919".to_owned();
        assert_eq!(child().as_str(), "9434765919");
        let unknown = nhs(555_555_555).as_str().to_owned();
        let response = client
            .summarize_attendances(as_clinician(summary_request(
                vec![spaced.clone(), unknown.clone()],
                "l-current",
            )))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.results.len(), 2, "{label}");
        let first = &response.results[0];
        assert_eq!(first.nhs_number, spaced, "{label}: answered as requested");
        let summary = first.summary.as_ref().unwrap();
        assert!(summary.available);
        assert_eq!(
            (
                summary.last_30_days,
                summary.last_90_days,
                summary.last_365_days
            ),
            (1, 1, 1),
            "{label}: the current lookup is excluded"
        );
        let recent = &summary.recent[0];
        assert_eq!(
            recent.attended_at,
            Some(to_timestamp(as_of() - Duration::days(10)))
        );
        assert_eq!(recent.ods_code, "RQX01");
        assert_eq!(recent.organisation_name, "Homerton Healthcare");
        assert_eq!(
            recent.setting_type,
            SettingType::UrgentTreatmentCentre as i32
        );
        assert_eq!(recent.role_code, "R8001");

        let second = &response.results[1];
        assert_eq!(second.nhs_number, unknown);
        let empty = second.summary.as_ref().unwrap();
        assert!(empty.available, "{label}: unknown is known to be zero");
        assert_eq!((empty.last_30_days, empty.recent.len()), (0, 0), "{label}");

        served.trigger.fire();
        served.running.wait().await.unwrap();
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_with_field_violations_and_writes_nothing() {
    for db in platform::testing::all("grpc_bad").await {
        let label = db.label();
        let served = serve(&db, |_| {}).await;
        let mut client = served.client.clone();

        let mut bad = record_request("l-bad", as_of());
        {
            let r = bad.get_mut();
            r.lookup_id = String::new();
            r.nhs_number = "12345".into();
            r.attended_at = None;
            r.site_ods_code = "R".into();
            r.setting_type = SettingType::Unspecified as i32;
        }
        let status = client.record_attendance(bad).await.unwrap_err();
        assert_eq!(
            violated_fields(&status),
            [
                "lookup_id",
                "nhs_number",
                "attended_at",
                "site_ods_code",
                "setting_type"
            ],
            "{label}"
        );

        let mut scheduled = record_request("l-scheduled", as_of());
        scheduled.get_mut().setting_type = SettingType::GpPractice as i32;
        let status = client.record_attendance(scheduled).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["setting_type"], "{label}");

        let mut only_ods = record_request("l-ods", as_of());
        only_ods.get_mut().site_ods_code = "RQX-01".into();
        let status = client.record_attendance(only_ods).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["site_ods_code"], "{label}");

        let good = child().as_str().to_owned();
        let status = client
            .summarize_attendances(as_clinician(summary_request(
                vec![good.clone(), good.clone(), good.clone(), "94347659".into()],
                "",
            )))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["nhs_numbers[3]"], "{label}");
        let mut no_clock = summary_request(vec![], "");
        no_clock.as_of = None;
        let status = client
            .summarize_attendances(as_clinician(no_clock))
            .await
            .unwrap_err();
        assert_eq!(
            violated_fields(&status),
            ["nhs_numbers", "as_of"],
            "{label}"
        );
        let status = client
            .summarize_attendances(as_clinician(summary_request(vec![good.clone(); 1001], "")))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["nhs_numbers"], "{label}");

        // Nothing was written by any of the refused calls.
        let response = client
            .summarize_attendances(as_clinician(summary_request(vec![good], "")))
            .await
            .unwrap()
            .into_inner();
        let summary = response.results[0].summary.as_ref().unwrap();
        assert_eq!(
            (summary.last_365_days, summary.recent.len()),
            (0, 0),
            "{label}"
        );

        served.trigger.fire();
        served.running.wait().await.unwrap();
    }
}

#[tokio::test]
async fn calls_from_a_peer_that_is_not_the_gateway_are_refused_and_write_nothing() {
    for store in stores("untrusted").await {
        let reporter = tonic_health::server::HealthReporter::new();
        let readiness = platform::health::Readiness::new(reporter, &[]).await;
        readiness.set_dependency_ready(true).await;
        let (_trigger, shutdown) = platform::shutdown::Shutdown::new();
        let handlers = Handlers::new(BackendContext {
            db: store.conn.clone(),
            readiness,
            shutdown,
            peer_trust: PeerTrust::Loopback,
        });
        // A request with no loopback peer (as from another host): refused before anything.
        let status = handlers
            .record_attendance(record_request("l-forged", as_of()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", store.db.label());
        let status = handlers
            .summarize_attendances(as_clinician(summary_request(
                vec![child().as_str().into()],
                "",
            )))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let left = store
            .attendances
            .summarize(&[child()], as_of(), "")
            .await
            .unwrap();
        assert!(left[0].recent.is_empty(), "{}", store.db.label());
    }
}

#[tokio::test]
async fn calls_before_the_database_is_ready_are_unavailable_with_retry_info() {
    for store in stores("unready").await {
        let reporter = tonic_health::server::HealthReporter::new();
        let readiness = platform::health::Readiness::new(reporter, &[]).await;
        let (_trigger, shutdown) = platform::shutdown::Shutdown::new();
        let handlers = Handlers::new(BackendContext {
            db: store.conn.clone(),
            readiness,
            shutdown,
            peer_trust: PeerTrust::Loopback,
        });
        let mut request = record_request("l-early", as_of());
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(([127, 0, 0, 1], 40000).into()),
            });
        let status = handlers.record_attendance(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{}", store.db.label());
        assert!(status.get_details_retry_info().is_some());
    }
}
