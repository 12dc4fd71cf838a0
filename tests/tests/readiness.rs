//! Readiness means "this pod can serve its own calls": a database stop leaves every pod ready
//! (in the load balancer) and each call answers UNAVAILABLE with RetryInfo until the database
//! is back. Run on a PostgreSQL cluster of the test's own, stopped like a crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::infra::{PrivatePostgres, create_databases};
use common::system::{BACKENDS, Options, System};
use cpis_proto::gateway as pb;
use pb::administration_client::AdministrationClient;
use pb::child_protection_client::ChildProtectionClient;
use std::time::Duration;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

const ADMIN_ORG: &str = "X26";
const TRUST: &str = "RQX";

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(10))
}

fn lookup() -> pb::LookupChildRequest {
    pb::LookupChildRequest {
        nhs_number: "9434765919".into(),
        access_kind: pb::AccessKind::Unscheduled.into(),
        setting: Some(pb::Setting {
            ods_code: "RQX01".into(),
            setting_type: pb::SettingType::EmergencyDepartment.into(),
        }),
        request_id: String::new(),
    }
}

async fn health(channel: tonic::transport::Channel) -> Option<ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut request = Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(2));
    HealthClient::new(channel)
        .check(request)
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_stop_leaves_every_pod_ready_and_lookups_unavailable_with_retry_info() {
    assert!(
        common::infra::can_run_private_postgres(),
        "this test runs as root with PostgreSQL server binaries installed (it stops its own cluster)"
    );
    let postgres = PrivatePostgres::start();
    create_databases(&postgres.url("postgres"), &BACKENDS).await;
    let sys = System::start(Options {
        postgres: false,
        public_tls: false,
        database_urls: BACKENDS.iter().map(|b| (*b, postgres.url(b))).collect(),
        redis_url: None,
        ..Options::default()
    })
    .await;
    let admin = sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]);
    let onboard = pb::UpsertOrganisationRequest {
        ods_code: TRUST.into(),
        name: "Organisation RQX".into(),
        kind: pb::OrganisationKind::Health.into(),
        onboarded: true,
    };
    AdministrationClient::new(sys.channel())
        .upsert_organisation(with_token(onboard, &admin))
        .await
        .unwrap();
    let clinician = sys.token("dr.jones", TRUST, "R8000", &["B0107"]);
    let client = ChildProtectionClient::new(sys.channel());
    client
        .clone()
        .lookup_child(with_token(lookup(), &clinician))
        .await
        .unwrap();

    postgres.crash();
    // Well past the backends' database pings (every 2 s) and the gateway's backend checks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in BACKENDS {
        let channel = sys.backend_channel(name, Some(sys.gateway_identity()));
        assert_eq!(
            health(channel).await,
            Some(ServingStatus::Serving),
            "{name} left readiness on a database stop"
        );
    }
    assert_eq!(
        health(sys.channel()).await,
        Some(ServingStatus::Serving),
        "the gateway left readiness on a database stop"
    );
    let refused = client
        .clone()
        .lookup_child(with_token(lookup(), &clinician))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.get_details_retry_info().is_some(),
        "UNAVAILABLE says when to retry: {refused:?}"
    );

    // The database back, lookups answer again, with no pod restarted.
    postgres.start_server();
    let mut answered = None;
    for _ in 0..60 {
        match client
            .clone()
            .lookup_child(with_token(lookup(), &clinician))
            .await
        {
            Ok(r) => {
                answered = Some(r.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    assert!(answered.is_some(), "lookups never answered again");
}
