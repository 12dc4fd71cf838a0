//! Hostile or heavy use cannot stop lookups: each attack run against the real processes (on
//! PostgreSQL and Redis when configured), with the limits set low, asserting from the metrics
//! that the attack's state was really reached and that capacity returns to baseline after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::system::{Options, System};
use cpis_proto::gateway as pb;
use cpis_tests::metrics::{scrape, value};
use pb::administration_client::AdministrationClient;
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use platform::domain::NhsNumber;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

const ADMIN_ORG: &str = "X26";
const LA: &str = "706";
const OTHER_LA: &str = "709";
const TRUST: &str = "RQX";
const SITE: &str = "RQX01";

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(60))
}

struct Attacked {
    sys: System,
    metrics: SocketAddr,
    la: String,
    other_la: String,
    clinician: String,
}

/// The system with the gateway's metrics on a port of their own and `gateway_env` set.
async fn started(gateway_env: &[(&str, &str)]) -> Attacked {
    let metrics_port = common::free_port();
    let env: Vec<(String, String)> = gateway_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(
            "CPIS_METRICS_LISTEN".to_string(),
            format!("127.0.0.1:{metrics_port}"),
        )])
        .collect();
    let sys = System::start_with(Options::default(), |name| {
        if name == "gateway" {
            env.clone()
        } else {
            Vec::new()
        }
    })
    .await;
    sys.onboard(&[
        (LA, pb::OrganisationKind::LocalAuthority),
        (OTHER_LA, pb::OrganisationKind::LocalAuthority),
        (TRUST, pb::OrganisationKind::Health),
    ])
    .await
    .unwrap();
    Attacked {
        la: sys.token("la.worker", LA, "R9000", &["CPIS_LA_MANAGE"]),
        other_la: sys.token("other.worker", OTHER_LA, "R9000", &["CPIS_LA_MANAGE"]),
        clinician: sys.token("dr.jones", TRUST, "R8000", &["B0107"]),
        metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
        sys,
    }
}

impl Attacked {
    async fn gauge(&self, name: &str) -> f64 {
        value(
            &scrape(self.metrics).await,
            name,
            &[("component", "gateway")],
        )
    }

    /// Waits (up to 10 s) for the gateway's gauge `name` to read `want`.
    async fn until(&self, name: &str, want: f64) {
        let mut last = f64::NAN;
        for _ in 0..100 {
            last = self.gauge(name).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} stayed at {last}, never {want}");
    }

    async fn watch(&self, token: &str) -> Result<tonic::Streaming<pb::Notification>, Status> {
        let mut client = LocalAuthorityClient::new(self.sys.channel());
        let request = pb::WatchNotificationsRequest {
            after_cursor: 0,
            from_start: true,
        };
        client
            .watch_notifications(with_token(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn lookup(&self) -> Result<pb::LookupChildResponse, Status> {
        let mut request = with_token(lookup_request(""), &self.clinician);
        request.set_timeout(Duration::from_secs(10));
        ChildProtectionClient::new(self.sys.channel())
            .lookup_child(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The child every lookup of this suite is about.
fn child() -> NhsNumber {
    NhsNumber::from_first_nine(999_100_001)
        .or_else(|| NhsNumber::from_first_nine(999_100_002))
        .unwrap()
}

/// A notifying lookup of [`child`] from an emergency department of the trust.
fn lookup_request(request_id: &str) -> pb::LookupChildRequest {
    pb::LookupChildRequest {
        nhs_number: child().as_str().into(),
        access_kind: pb::AccessKind::Unscheduled.into(),
        setting: Some(pb::Setting {
            ods_code: SITE.into(),
            setting_type: pb::SettingType::EmergencyDepartment.into(),
        }),
        request_id: request_id.into(),
    }
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_watches_release_their_capacity_and_lookups_still_answer() {
    let a = started(&[
        ("CPIS_MAX_WATCHES", "40"),
        ("CPIS_MAX_WATCHES_PER_ORGANISATION", "40"),
        ("CPIS_MAX_IN_FLIGHT", "16"),
    ])
    .await;
    // Ten rounds of 40 watches opened, held, then abandoned: 400 in all, ten times the limit.
    for round in 0..10 {
        let mut open = Vec::new();
        for _ in 0..40 {
            open.push(a.watch(&a.la).await.unwrap());
        }
        if round == 0 {
            assert_eq!(
                a.gauge("cpis_open_watches").await,
                40.0,
                "the attack's state: every watch open at once"
            );
            assert_eq!(
                a.gauge("cpis_calls_in_flight").await,
                0.0,
                "open watches hold none of the permits unary calls need"
            );
            // At the limit, lookups still answer.
            a.lookup().await.unwrap();
        }
        drop(open);
        a.until("cpis_open_watches", 0.0).await;
    }
    a.until("cpis_calls_in_flight", 0.0).await;
    let answer = a.lookup().await.unwrap();
    assert!(!answer.flagged);
    // The capacity came back: a new watch is admitted.
    a.watch(&a.la).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_beyond_their_limits_are_refused_with_too_many_watches() {
    let a = started(&[
        ("CPIS_MAX_WATCHES", "5"),
        ("CPIS_MAX_WATCHES_PER_ORGANISATION", "3"),
    ])
    .await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(a.watch(&a.la).await.unwrap());
    }
    let refused = a.watch(&a.la).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_WATCHES");
    assert!(refused.get_details_retry_info().is_none());

    // Another LA has limits of its own, until the gateway's total is reached.
    let theirs = [
        a.watch(&a.other_la).await.unwrap(),
        a.watch(&a.other_la).await.unwrap(),
    ];
    let refused = a.watch(&a.other_la).await.unwrap_err();
    assert_eq!(reason(&refused), "TOO_MANY_WATCHES");
    assert_eq!(a.gauge("cpis_open_watches").await, 5.0);

    // Closing one gives its place back.
    mine.pop();
    a.until("cpis_open_watches", 4.0).await;
    mine.push(a.watch(&a.la).await.unwrap());
    drop((mine, theirs));
    a.until("cpis_open_watches", 0.0).await;
}

/// A LookupChild call over `channel` that sends its headers (with `token`, if any) and never
/// a body; returns once the gateway answered.
async fn headers_only(
    channel: tonic::transport::Channel,
    addr: SocketAddr,
    token: Option<&str>,
    log: &str,
) -> HeldCall {
    use http_body_util::StreamBody;
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<tonic::codegen::Bytes>, Status>>(1);
    let body = tonic::body::Body::new(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let mut request = http::Request::builder();
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .method("POST")
        .uri(format!(
            "http://{addr}/cpis.gateway.v1.ChildProtection/LookupChild"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = match tokio::time::timeout(
        Duration::from_secs(10),
        tower::ServiceExt::oneshot(channel, request),
    )
    .await
    {
        Ok(r) => r.unwrap(),
        Err(_) => panic!(
            "a call without a token must be answered without waiting for its body:\n{}",
            log
        ),
    };
    HeldCall {
        _body: tx,
        status: response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned()),
    }
}

struct HeldCall {
    /// The request body, never sent and never ended while this is held.
    _body: tokio::sync::mpsc::Sender<Result<http_body::Frame<tonic::codegen::Bytes>, Status>>,
    status: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_without_a_body_cannot_starve_lookups() {
    let a = started(&[("CPIS_MAX_IN_FLIGHT", "8")]).await;
    let addr = a.sys.gateway_addr();
    // 300 token-less calls held open (headers sent, body never), over three connections: far
    // more than the gateway's 8 permits.
    // The channels are kept, so the three connections (and every held call's open request
    // body) last until the end of the test, through the lookups below.
    let channels: Vec<_> = (0..3).map(|_| a.sys.channel()).collect();
    let mut held = Vec::new();
    for channel in &channels {
        for _ in 0..100 {
            held.push(headers_only(channel.clone(), addr, None, &a.sys.log("gateway")).await);
        }
    }
    assert!(
        held.iter().all(|c| c.status.as_deref() == Some("16")),
        "every token-less call is UNAUTHENTICATED at once: {:?}",
        held.iter().map(|c| c.status.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        a.gauge("cpis_calls_in_flight").await,
        0.0,
        "a caller without a token holds no permit"
    );
    // While all of them are held, a clinician's lookup answers.
    for _ in 0..5 {
        a.lookup().await.unwrap();
    }
    drop(held);
    drop(channels);
    a.until("cpis_calls_in_flight", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_completes_gives_its_permit_back() {
    let a = std::sync::Arc::new(
        started(&[("CPIS_MAX_IN_FLIGHT", "4"), ("CPIS_BODY_TIMEOUT", "2")]).await,
    );
    let addr = a.sys.gateway_addr();
    // Four authenticated calls that send headers and never a body: every permit taken.
    let held: Vec<_> = (0..4)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                let token = a.clinician.clone();
                headers_only(a.sys.channel(), addr, Some(&token), "").await
            })
        })
        .collect();
    a.until("cpis_calls_in_flight", 4.0).await;
    let shed = a.lookup().await.unwrap_err();
    assert_eq!(
        shed.code(),
        Code::ResourceExhausted,
        "the attack's state: no permit left"
    );
    // Within the body timeout each held call is ended, and its permit given back.
    for call in held {
        let call = call.await.unwrap();
        assert_eq!(call.status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    }
    a.until("cpis_calls_in_flight", 0.0).await;
    a.lookup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_its_rpcs_limit_is_message_too_large() {
    let a = started(&[]).await;
    // A lookup needs well under a kilobyte; this one sends 100 KB.
    let request = lookup_request(&"r".repeat(100 * 1024));
    let refused = ChildProtectionClient::new(a.sys.channel())
        .lookup_child(with_token(request, &a.clinician))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "MESSAGE_TOO_LARGE");
    assert!(refused.get_details_retry_info().is_none());
    assert!(
        !refused.message().contains("decoded message length"),
        "library text reached the caller: {}",
        refused.message()
    );
    a.lookup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_input_stops_at_the_edge() {
    let a = started(&[]).await;
    // A NUL in an id of the request: INVALID_ARGUMENT naming it, nothing decided.
    let mut request = lookup_request("lookup\0one");
    let refused = ChildProtectionClient::new(a.sys.channel())
        .lookup_child(with_token(request.clone(), &a.clinician))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|f| f.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["request_id"]);

    // A NUL or an escape in a token's claims: UNAUTHENTICATED.
    for user in ["dr.jones\0", "dr.\u{1b}[2Jjones"] {
        let token = a.sys.token(user, TRUST, "R8000", &["B0107"]);
        request.request_id.clear();
        let refused = ChildProtectionClient::new(a.sys.channel())
            .lookup_child(with_token(request.clone(), &token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{user:?}");
    }

    // Bidirectional overrides and escapes are refused in organisation names.
    let admin = a.sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]);
    for name in ["Council\u{202E}lanretni", "Council \u{1b}[31mred"] {
        let upsert = pb::UpsertOrganisationRequest {
            ods_code: "Z98".into(),
            name: name.into(),
            kind: pb::OrganisationKind::LocalAuthority.into(),
            onboarded: true,
        };
        let refused = AdministrationClient::new(a.sys.channel())
            .upsert_organisation(with_token(upsert, &admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name:?}");
    }
    a.lookup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poisoned_decision_never_fails_the_audit_batch_of_the_others() {
    use cpis_proto::access::access_control_client::AccessControlClient;
    use cpis_proto::access::{DecideRequest, Principal};
    let a = started(&[]).await;
    let gateway = a.sys.ca.gateway(a.sys.dir.path());
    let channel = a.sys.backend_channel("access-service", Some(&gateway));
    let decide = |user: String| {
        let channel = channel.clone();
        async move {
            let request = DecideRequest {
                principal: Some(Principal {
                    user_id: user,
                    ods_code: LA.into(),
                    role_code: "R9000".into(),
                    activities: vec!["CPIS_LA_MANAGE".into()],
                    ..Default::default()
                }),
                action: "ListFlags".into(),
                ..Default::default()
            };
            AccessControlClient::new(channel).decide(request).await
        }
    };
    // Decisions sent together, so they share audit batches; one of them carries a NUL that
    // PostgreSQL would refuse in a text column.
    let mut calls = Vec::new();
    for i in 0..40 {
        let user = if i == 20 {
            "worker\0poisoned".to_string()
        } else {
            format!("worker.{i}")
        };
        calls.push(tokio::spawn(decide(user)));
    }
    let mut allowed = 0;
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(d) => {
                assert!(d.into_inner().allowed);
                allowed += 1;
            }
            Err(status) => {
                assert_eq!(i, 20, "a good decision failed: {status:?}");
                assert_eq!(status.code(), Code::InvalidArgument);
            }
        }
    }
    assert_eq!(allowed, 39);
    let auditor = a
        .sys
        .token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    let verified = pb::audit_client::AuditClient::new(a.sys.channel())
        .verify_audit_log(with_token(
            pb::VerifyAuditLogRequest { checkpoint: None },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
}

/// The gateway's audit records of `action` for organisation `ods`, as (outcome, reason).
async fn audited(a: &Attacked, ods: &str, action: &str) -> Vec<(i32, String)> {
    let auditor = a
        .sys
        .token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    let request = pb::ListAuditEventsRequest {
        ods_code: ods.into(),
        page_size: 1000,
        ..Default::default()
    };
    pb::audit_client::AuditClient::new(a.sys.channel())
        .list_audit_events(with_token(request, &auditor))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| (e.outcome, e.reason))
        .collect()
}

/// Waits (up to 15 s) for `stream` to end with an error, and returns it.
async fn ended(stream: &mut tonic::Streaming<pb::Notification>) -> Status {
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    end.expect("the watch was never ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_ends_when_its_token_expires_or_its_organisation_is_offboarded() {
    let a = started(&[("CPIS_WATCH_RECHECK_SECONDS", "1")]).await;

    // A token that expires in 3 s: the watch it opened ends then, UNAUTHENTICATED.
    let short = a.sys.token_for(
        "la.worker",
        LA,
        "R9000",
        &["CPIS_LA_MANAGE"],
        Duration::from_secs(3),
    );
    let mut watch = a.watch(&short).await.unwrap();
    let status = ended(&mut watch).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    a.until("cpis_open_watches", 0.0).await;

    // An organisation offboarded while its watch is open: PERMISSION_DENIED within a re-check.
    let mut watch = a.watch(&a.other_la).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // a few allowing re-checks
    let admin = a.sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]);
    let offboard = pb::UpsertOrganisationRequest {
        ods_code: OTHER_LA.into(),
        name: format!("Organisation {OTHER_LA}"),
        kind: pb::OrganisationKind::LocalAuthority.into(),
        onboarded: false,
    };
    AdministrationClient::new(a.sys.channel())
        .upsert_organisation(with_token(offboard, &admin))
        .await
        .unwrap();
    let status = ended(&mut watch).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "ORGANISATION_NOT_ONBOARDED");
    a.until("cpis_open_watches", 0.0).await;

    // The log holds the watch's opening decision and the denying re-check, and none of the
    // allowing re-checks between them.
    let records = audited(&a, OTHER_LA, "WatchNotifications").await;
    let allowed = records
        .iter()
        .filter(|(o, _)| *o == pb::AuditOutcome::Allowed as i32)
        .count();
    let denied: Vec<_> = records
        .iter()
        .filter(|(o, _)| *o == pb::AuditOutcome::Denied as i32)
        .collect();
    assert_eq!(allowed, 1, "{records:?}");
    assert_eq!(denied.len(), 1, "{records:?}");
    assert_eq!(denied[0].1, "ORGANISATION_NOT_ONBOARDED");
}

/// An open CPP episode starting on `start`, with the LA's duty numbers.
fn episode(nhs: &str, start: &str) -> pb::FlagRecord {
    pb::FlagRecord {
        nhs_number: nhs.into(),
        flag_type: pb::FlagType::Cpp.into(),
        start_date: start.into(),
        emergency_phone: "020 7364 4079".into(),
        ..Default::default()
    }
}

async fn upload(
    a: &Attacked,
    token: &str,
    id: &str,
    records: Vec<pb::FlagRecord>,
) -> pb::UploadFlagsResponse {
    let message = pb::UploadFlagsRequest {
        upload_id: id.into(),
        records,
    };
    LocalAuthorityClient::new(a.sys.channel())
        .upload_flags(with_token(tokio_stream::iter(vec![message]), token))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_las_episodes_cannot_stop_a_childs_lookup() {
    let a = started(&[]).await;
    let child = child();
    let nhs = child.as_str();
    // The LA that protects the child.
    let mine = upload(
        &a,
        &a.other_la,
        "protects",
        vec![episode(nhs, "2024-01-01")],
    )
    .await;
    assert_eq!(mine.results[0].code(), pb::RecordCode::Accepted);
    // Another LA floods the same child with open episodes: ten are taken, the rest refused.
    let flood: Vec<_> = (0..30)
        .map(|i| episode(nhs, &format!("2024-{:02}-{:02}", 2 + i / 28, 1 + i % 28)))
        .collect();
    let report = upload(&a, &a.la, "flood", flood).await;
    let codes: Vec<_> = report.results.iter().map(|r| r.code()).collect();
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == pb::RecordCode::Accepted)
            .count(),
        10
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == pb::RecordCode::TooManyEpisodes)
            .count(),
        20
    );
    // The lookup still answers, and shows the protecting LA's plan.
    let answer = a.lookup().await.unwrap();
    assert!(answer.flagged);
    assert!(!answer.flags_truncated);
    assert_eq!(answer.flags.len(), 11);
    assert!(
        answer.flags.iter().any(|f| f
            .local_authority
            .as_ref()
            .is_some_and(|l| l.ods_code == OTHER_LA)),
        "the protecting LA's plan is shown"
    );
}

/// The delivery records of organisation `ods`'s watches: (first cursor, last cursor, count).
async fn deliveries(a: &Attacked, ods: &str) -> Vec<(u64, u64, u64)> {
    let auditor = a
        .sys
        .token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    let request = pb::ListAuditEventsRequest {
        ods_code: ods.into(),
        page_size: 1000,
        ..Default::default()
    };
    pb::audit_client::AuditClient::new(a.sys.channel())
        .list_audit_events(with_token(request, &auditor))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.outcome == pb::AuditOutcome::Delivered as i32)
        .map(|e| {
            assert_eq!(e.action, "WatchNotifications");
            assert_eq!(e.user_id, "la.worker", "the watcher is named");
            let d = e.delivery.expect("a delivery record states its span");
            (d.first_cursor, d.last_cursor, d.count)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_watch_delivers_is_audited() {
    let a = started(&[]).await;
    let nhs = child();
    let stored = upload(
        &a,
        &a.la,
        "watched",
        vec![episode(nhs.as_str(), "2024-01-01")],
    )
    .await;
    assert_eq!(stored.results[0].code(), pb::RecordCode::Accepted);

    // Three notifying lookups: three notifications for the LA, relayed by its watch.
    let mut watch = a.watch(&a.la).await.unwrap();
    a.until("cpis_open_watches", 1.0).await;
    let mut cursors = Vec::new();
    for _ in 0..3 {
        a.lookup().await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(15), watch.message())
            .await
            .expect("a notification within 15 s")
            .unwrap()
            .expect("the watch is still open");
        cursors.push(n.cursor);
    }
    // While the watch stays open (re-check every 30 s) nothing more is recorded; when its
    // caller goes, what it relayed is.
    drop(watch);
    a.until("cpis_open_watches", 0.0).await;
    let mut recorded = Vec::new();
    for _ in 0..50 {
        recorded = deliveries(&a, LA).await;
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = *cursors.first().unwrap();
    let last = *cursors.last().unwrap();
    assert_eq!(recorded, [(first, last, 3)], "relayed cursors {cursors:?}");

    // The chain, delivery records in it, still verifies.
    let auditor = a
        .sys
        .token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    let verified = pb::audit_client::AuditClient::new(a.sys.channel())
        .verify_audit_log(with_token(
            pb::VerifyAuditLogRequest { checkpoint: None },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_its_streams() {
    let a = started(&[("CPIS_MAX_STREAMS_PER_CONNECTION", "3")]).await;
    // Three long-lived calls on one connection take all its streams.
    let channel = a.sys.channel();
    let mut held = Vec::new();
    for _ in 0..3 {
        let request = pb::WatchNotificationsRequest {
            after_cursor: 0,
            from_start: true,
        };
        let watch = LocalAuthorityClient::new(channel.clone())
            .watch_notifications(with_token(request, &a.la))
            .await
            .unwrap()
            .into_inner();
        held.push(watch);
    }
    a.until("cpis_open_watches", 3.0).await;
    // A fourth call on that connection is not served while they are held (the client waits
    // for a stream, or is refused one)...
    let mut fourth = Box::pin(async {
        let mut request = with_token(lookup_request(""), &a.clinician);
        request.set_timeout(Duration::from_secs(30));
        ChildProtectionClient::new(channel.clone())
            .lookup_child(request)
            .await
    });
    match tokio::time::timeout(Duration::from_secs(2), &mut fourth).await {
        Err(_) => {}
        Ok(Err(status)) => assert_ne!(status.code(), Code::Ok),
        Ok(Ok(_)) => panic!("a call beyond the connection's streams was served"),
    }
    // ...while another connection is served at once,
    a.lookup().await.unwrap();
    // and when one stream ends, the connection takes a call again.
    held.pop();
    let retried = {
        let mut request = with_token(lookup_request(""), &a.clinician);
        request.set_timeout(Duration::from_secs(10));
        tokio::time::timeout(
            Duration::from_secs(15),
            ChildProtectionClient::new(channel.clone()).lookup_child(request),
        )
        .await
    };
    assert!(
        matches!(retried, Ok(Ok(_))),
        "a freed stream serves again: {retried:?}"
    );
    drop(held);
    a.until("cpis_open_watches", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_closed_at_their_age_idle_or_silent_plaintext_included() {
    let a = started(&[("CPIS_MAX_CONNECTION_AGE", "2"), ("CPIS_GRACE_PERIOD", "1")]).await;
    let addr = a.sys.gateway_addr();
    // An HTTP/2 connection that did one call, then sits idle: closed (GOAWAY) at its age.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    drop(client);
    let closed = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection outlived its age by 13 s"
    );
    // A TCP connection that never says a word is not held for ever either.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the server's SETTINGS, then GOAWAY
            }
        }
    })
    .await;
    assert!(read.is_ok(), "a silent connection was held past its age");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_their_limit_are_refused_before_a_permit() {
    let a = started(&[]).await;
    let mut request = with_token(lookup_request(""), &a.clinician);
    // 20 KiB of header: over the 16 KiB header list the servers accept.
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(20 * 1024).parse().unwrap());
    request.set_timeout(Duration::from_secs(10));
    let refused = tokio::time::timeout(
        Duration::from_secs(15),
        ChildProtectionClient::new(a.sys.channel()).lookup_child(request),
    )
    .await
    .expect("an oversized header list is answered at once");
    assert!(refused.is_err(), "an oversized header list was served");
    assert_eq!(a.gauge("cpis_calls_in_flight").await, 0.0);
    a.lookup().await.unwrap();
}

/// How many flags the LA behind `token` holds.
async fn flags_held(a: &Attacked, token: &str) -> usize {
    LocalAuthorityClient::new(a.sys.channel())
        .list_flags(with_token(
            pb::ListFlagsRequest {
                page_size: 1000,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .flags
        .len()
}

/// One gRPC message as it goes on the wire: uncompressed, length-prefixed.
fn grpc_frame(message: &impl prost::Message) -> tonic::codegen::Bytes {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_its_caller_abandons_applies_nothing() {
    let a = started(&[]).await;
    let first = pb::UploadFlagsRequest {
        upload_id: "abandoned".into(),
        records: vec![episode(child().as_str(), "2024-01-01")],
    };

    // A client that cancels its call (RST_STREAM CANCEL) after its first message.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(first.clone()).await.unwrap();
    let call = tokio::spawn({
        let channel = a.sys.channel();
        let token = a.la.clone();
        async move {
            LocalAuthorityClient::new(channel)
                .upload_flags(with_token(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    &token,
                ))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    drop(tx);

    // A client that resets its stream with NO_ERROR, which HTTP/2 servers read as a body's
    // early end rather than a failure.
    let tcp = tokio::net::TcpStream::connect(a.sys.gateway_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/cpis.gateway.v1.LocalAuthority/UploadFlags",
            a.sys.gateway_addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", a.la))
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(request, false).unwrap();
    let reset = pb::UploadFlagsRequest {
        upload_id: "reset".into(),
        ..first
    };
    body.send_data(grpc_frame(&reset), false).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    body.send_reset(h2::Reason::NO_ERROR);

    // Neither was applied, now or later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        flags_held(&a, &a.la).await,
        0,
        "an abandoned upload was applied"
    );
    // The same records sent whole are.
    let whole = upload(
        &a,
        &a.la,
        "whole",
        vec![episode(child().as_str(), "2024-01-01")],
    )
    .await;
    assert_eq!(whole.results[0].code(), pb::RecordCode::Accepted);
    assert_eq!(flags_held(&a, &a.la).await, 1);
}

/// The largest record the fields' maxima allow that is still refused: a spaced NHS number
/// padded to 32 bytes (echoed as sent, cut to 16), every date, phone and the email at their
/// maxima, and an office-hours phone of 32 bytes that is not a phone number. Before the report
/// was bounded, 50,000 of these made a report of about 6 MB.
fn maximal_refused_record() -> pb::FlagRecord {
    let email = format!(
        "{}@{}.{}.{}",
        "l".repeat(64),
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(61)
    );
    pb::FlagRecord {
        nhs_number: format!("{:<32}", "943 476 5919"),
        flag_type: pb::FlagType::Ucpp.into(),
        start_date: "2025-01-01".into(),
        end_date: "2025-02-01".into(),
        due_date: "2025-09-01".into(),
        emergency_phone: format!("{:<32}", "+44 20 7364 4079"),
        office_hours_phone: "0207-364-4079/0207-364-4080 ext9".into(),
        email,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_upload_report_is_always_deliverable() {
    use prost::Message;
    let a = started(&[]).await;
    // 50,000 records, 5,000 per message (each message near the 2 MiB limit): the first
    // flags the child, every other one is refused with a 16-byte echo and a message.
    let child = child();
    let mut records = vec![maximal_refused_record(); 50_000];
    records[0] = episode(child.as_str(), "2024-01-01");
    let upload_id = format!("largest-{}", "x".repeat(120));
    let messages: Vec<pb::UploadFlagsRequest> = records
        .chunks(5_000)
        .map(|chunk| pb::UploadFlagsRequest {
            upload_id: upload_id.clone(),
            records: chunk.to_vec(),
        })
        .collect();
    assert!(messages.iter().all(|m| m.encoded_len() <= 2 * 1024 * 1024));
    let channel = a.sys.channel();
    let send = || {
        let (messages, la, channel) = (messages.clone(), a.la.clone(), channel.clone());
        async move {
            let mut request = with_token(tokio_stream::iter(messages), &la);
            request.set_timeout(Duration::from_secs(300));
            // A stock client: tonic's default 4 MiB receive limit, stated.
            LocalAuthorityClient::new(channel)
                .max_decoding_message_size(4 * 1024 * 1024)
                .upload_flags(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let report = send()
        .await
        .unwrap_or_else(|status| panic!("{status:?}\n{}", a.sys.log("flag-service")));
    assert_eq!(report.results.len(), 50_000);
    assert_eq!(report.status(), pb::UploadStatus::Partial);
    assert_eq!((report.accepted, report.rejected), (1, 49_999));
    assert!(
        report.encoded_len() <= 4 * 1024 * 1024,
        "{}",
        report.encoded_len()
    );
    for (i, r) in report.results.iter().enumerate() {
        assert_eq!(r.index as usize, i);
        if i > 0 {
            assert_eq!(r.code(), pb::RecordCode::InvalidField);
            assert_eq!(r.nhs_number, "943 476 5919    ", "as sent, cut to 16 bytes");
            assert!(r.message.starts_with("office_hours_phone") && r.message.len() <= 48);
        }
    }
    // Applied, and told so: the child is flagged.
    assert!(a.lookup().await.unwrap().flagged);
    // A resend with the same upload_id gets the same report, again within a stock client's
    // limit.
    let again = send().await.unwrap();
    assert_eq!(again, report);
}
