//! A dead replica costs almost nothing: with two processes of each backend behind one
//! gateway, kill -9 of one flag-service and then of one access-service under a steady load of
//! lookups fails at most 2% of the lookups begun during each outage, and none answers a
//! false "not flagged". The gateway ejects an endpoint whose call failed at the transport
//! before it retries, so the retry goes to the other replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::system::{Options, System};
use cpis_proto::gateway as pb;
use pb::administration_client::AdministrationClient;
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Request;

const ADMIN_ORG: &str = "X26";
const LA: &str = "706";
const TRUST: &str = "RQX";
const CHILD: &str = "9434765919";
/// How long after a kill counts as its outage.
const OUTAGE: Duration = Duration::from_secs(3);

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(5))
}

/// One lookup's start and outcome: `Ok(flagged)` or the failure's code.
type Outcome = (Instant, Result<bool, tonic::Code>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_fails_almost_no_lookups_and_none_falsely_not_flagged() {
    assert!(
        platform::testing::postgres_server_url().is_some(),
        "replicas share one database: CPIS_TEST_POSTGRES_URL must be set"
    );
    let mut sys = System::start(Options::default()).await;
    let flag_2 = sys.add_replica("flag-service").await;
    let access_2 = sys.add_replica("access-service").await;
    sys.add_replica("attendance-service").await;
    let _ = (flag_2, access_2);

    let admin = sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]);
    for (ods, kind) in [
        (LA, pb::OrganisationKind::LocalAuthority),
        (TRUST, pb::OrganisationKind::Health),
    ] {
        let request = pb::UpsertOrganisationRequest {
            ods_code: ods.into(),
            name: format!("Organisation {ods}"),
            kind: kind.into(),
            onboarded: true,
        };
        AdministrationClient::new(sys.channel())
            .upsert_organisation(with_token(request, &admin))
            .await
            .unwrap();
    }
    let la = sys.token("la.worker", LA, "R9000", &["CPIS_LA_MANAGE"]);
    let upload = pb::UploadFlagsRequest {
        upload_id: "one".into(),
        records: vec![pb::FlagRecord {
            nhs_number: CHILD.into(),
            flag_type: pb::FlagType::Cpp.into(),
            start_date: "2024-01-01".into(),
            emergency_phone: "020 7364 4079".into(),
            ..Default::default()
        }],
    };
    let report = LocalAuthorityClient::new(sys.channel())
        .upload_flags(with_token(tokio_stream::iter(vec![upload]), &la))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.results[0].code(), pb::RecordCode::Accepted);

    let clinician = sys.token("dr.jones", TRUST, "R8000", &["B0170"]);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut lookers = Vec::new();
    for _ in 0..4 {
        let client = ChildProtectionClient::new(sys.channel());
        let (stop, outcomes, token) = (stop.clone(), outcomes.clone(), clinician.clone());
        lookers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = pb::LookupChildRequest {
                    nhs_number: CHILD.into(),
                    access_kind: pb::AccessKind::Scheduled.into(),
                    setting: Some(pb::Setting {
                        ods_code: "RQX01".into(),
                        setting_type: pb::SettingType::GpPractice.into(),
                    }),
                    request_id: String::new(),
                };
                let started = Instant::now();
                let answer = client
                    .clone()
                    .lookup_child(with_token(request, &token))
                    .await
                    .map(|r| r.into_inner().flagged)
                    .map_err(|s| s.code());
                outcomes.lock().unwrap().push((started, answer));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flag_killed = Instant::now();
    sys.kill("flag-service");
    tokio::time::sleep(OUTAGE + Duration::from_secs(1)).await;
    let access_killed = Instant::now();
    sys.kill("access-service");
    tokio::time::sleep(OUTAGE + Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in lookers {
        l.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap();
    assert!(
        outcomes.iter().all(|(_, r)| *r != Ok(false)),
        "a lookup said not flagged"
    );
    for (what, killed) in [
        ("flag-service", flag_killed),
        ("access-service", access_killed),
    ] {
        let during: Vec<_> = outcomes
            .iter()
            .filter(|(t, _)| *t >= killed && *t < killed + OUTAGE)
            .collect();
        let failed = during.iter().filter(|(_, r)| r.is_err()).count();
        let codes: Vec<_> = during.iter().filter_map(|(_, r)| r.err()).collect();
        eprintln!(
            "{what} killed: {} lookups begun in the next {OUTAGE:?}, {failed} failed {codes:?}",
            during.len()
        );
        assert!(
            during.len() >= 20,
            "too little load to judge: {}",
            during.len()
        );
        assert!(
            failed * 50 <= during.len(),
            "{failed} of {} lookups failed after one {what} replica died ({codes:?}):\n{}",
            during.len(),
            sys.log("gateway")
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
