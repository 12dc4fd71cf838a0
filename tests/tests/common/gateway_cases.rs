// The public API's end-to-end cases, included by `gateway.rs` (PostgreSQL and Redis when
// configured) and `gateway_sqlite.rs` (the embedded default), so both run every case.

use common::system::{Options, System};
use cpis_proto::gateway as pb;
use pb::administration_client::AdministrationClient;
use pb::audit_client::AuditClient;
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use platform::domain::NhsNumber;
use std::time::Duration;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

const ADMIN_ORG: &str = "X26";
const LA: &str = "706";
const OTHER_LA: &str = "709";
const TRUST: &str = "RQX";
const SITE: &str = "RQX01";
const NOT_ONBOARDED_TRUST: &str = "RYY";

fn child(n: u32) -> String {
    (n..)
        .find_map(|k| NhsNumber::from_first_nine(999_100_000 + k))
        .unwrap()
        .as_str()
        .to_owned()
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(10))
}

struct Tokens {
    admin: String,
    auditor: String,
    la: String,
    other_la: String,
    clinician: String,
    gp: String,
}

fn tokens(sys: &System) -> Tokens {
    Tokens {
        admin: sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]),
        auditor: sys.token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]),
        la: sys.token("la.worker", LA, "R9000", &["CPIS_LA_MANAGE"]),
        other_la: sys.token("other.la.worker", OTHER_LA, "R9000", &["CPIS_LA_MANAGE"]),
        clinician: sys.token("dr.jones", TRUST, "R8000", &["B0107"]),
        gp: sys.token("dr.gp", TRUST, "R8000", &["B0170"]),
    }
}

async fn onboard(sys: &System, t: &Tokens) {
    let mut admin = AdministrationClient::new(sys.channel());
    for (ods, name, kind, onboarded) in [
        (
            LA,
            "Tower Hamlets",
            pb::OrganisationKind::LocalAuthority,
            true,
        ),
        (
            OTHER_LA,
            "Lancashire",
            pb::OrganisationKind::LocalAuthority,
            true,
        ),
        (
            TRUST,
            "Homerton University Hospital",
            pb::OrganisationKind::Health,
            true,
        ),
        (
            NOT_ONBOARDED_TRUST,
            "A trust not yet onboarded",
            pb::OrganisationKind::Health,
            false,
        ),
    ] {
        let request = pb::UpsertOrganisationRequest {
            ods_code: ods.into(),
            name: name.into(),
            kind: kind.into(),
            onboarded,
        };
        admin
            .upsert_organisation(with_token(request, &t.admin))
            .await
            .unwrap();
    }
}

async fn started() -> (System, Tokens) {
    let sys = System::start(Options { postgres: ON_POSTGRES, public_tls: false, ..Options::default() }).await;
    let t = tokens(&sys);
    onboard(&sys, &t).await;
    (sys, t)
}

fn record(nhs: &str, flag_type: pb::FlagType, start: &str) -> pb::FlagRecord {
    let due = if flag_type == pb::FlagType::Ucpp {
        "2099-01-01"
    } else {
        ""
    };
    pb::FlagRecord {
        nhs_number: nhs.into(),
        flag_type: flag_type.into(),
        start_date: start.into(),
        end_date: String::new(),
        due_date: due.into(),
        emergency_phone: "020 7364 4079".into(),
        office_hours_phone: "020 7364 5006".into(),
        email: "mash@example.org".into(),
    }
}

async fn upload(
    sys: &System,
    token: &str,
    upload_id: &str,
    records: Vec<pb::FlagRecord>,
) -> pb::UploadFlagsResponse {
    let mut la = LocalAuthorityClient::new(sys.channel());
    let message = pb::UploadFlagsRequest {
        upload_id: upload_id.into(),
        records,
    };
    let mut request = Request::new(tokio_stream::iter(vec![message]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    la.upload_flags(request)
        .await
        .unwrap_or_else(|s| panic!("upload failed: {s:?}"))
        .into_inner()
}

fn lookup_request(
    nhs: &str,
    kind: pb::AccessKind,
    site: &str,
    setting: pb::SettingType,
    request_id: &str,
) -> pb::LookupChildRequest {
    pb::LookupChildRequest {
        nhs_number: nhs.into(),
        access_kind: kind.into(),
        setting: Some(pb::Setting {
            ods_code: site.into(),
            setting_type: setting.into(),
        }),
        request_id: request_id.into(),
    }
}

async fn lookup(sys: &System, token: &str, nhs: &str) -> Result<pb::LookupChildResponse, Status> {
    let request = lookup_request(
        nhs,
        pb::AccessKind::Unscheduled,
        SITE,
        pb::SettingType::EmergencyDepartment,
        "",
    );
    ChildProtectionClient::new(sys.channel())
        .lookup_child(with_token(request, token))
        .await
        .map(|r| r.into_inner())
}

async fn notifications(sys: &System, token: &str) -> Vec<pb::Notification> {
    let request = pb::ListNotificationsRequest {
        after_cursor: 0,
        from_start: true,
        page_size: 1000,
        page_token: String::new(),
    };
    LocalAuthorityClient::new(sys.channel())
        .list_notifications(with_token(request, token))
        .await
        .unwrap()
        .into_inner()
        .notifications
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_lookup_says_not_flagged_until_the_la_uploads_and_flagged_at_once_after() {
    let (sys, t) = started().await;
    let nhs = child(1);
    let before = lookup(&sys, &t.clinician, &nhs).await.unwrap();
    assert!(!before.flagged && before.flags.is_empty());
    assert!(before.attendance.as_ref().unwrap().available);
    assert!(!before.lookup_id.is_empty());

    let report = upload(
        &sys,
        &t.la,
        "daily-1",
        vec![record(&nhs, pb::FlagType::Cpp, "2025-01-10")],
    )
    .await;
    assert_eq!(report.status(), pb::UploadStatus::Success, "{report:?}");
    assert_eq!(report.accepted, 1);

    let after = lookup(&sys, &t.clinician, &nhs).await.unwrap();
    assert!(
        after.flagged,
        "read your writes: the upload returned, so the lookup must see it"
    );
    let flag = &after.flags[0];
    assert_eq!(flag.flag_type(), pb::FlagType::Cpp);
    assert!(flag.active);
    let la = flag.local_authority.as_ref().unwrap();
    assert_eq!(la.ods_code, LA);
    assert_eq!(la.name, "Tower Hamlets");
    assert_eq!(la.emergency_phone, "020 7364 4079");
    // The first lookup is now an attendance in the log, excluded from its own count.
    assert_eq!(
        after.attendance.as_ref().unwrap().last_30_days,
        1,
        "{after:?}"
    );
}

#[tokio::test]
async fn each_refusal_is_permission_denied_with_its_reason_and_every_decision_is_audited() {
    let (sys, t) = started().await;
    let nhs = child(2);
    // MISSING_ACTIVITY: a silent-read role making a notifying lookup.
    let status = lookup(&sys, &t.gp, &nhs).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "MISSING_ACTIVITY")
    );
    // ORGANISATION_NOT_ONBOARDED.
    let outsider = sys.token("dr.out", NOT_ONBOARDED_TRUST, "R8000", &["B0107"]);
    let request = lookup_request(
        &nhs,
        pb::AccessKind::Unscheduled,
        "RYY01",
        pb::SettingType::EmergencyDepartment,
        "",
    );
    let status = ChildProtectionClient::new(sys.channel())
        .lookup_child(with_token(request, &outsider))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "ORGANISATION_NOT_ONBOARDED")
    );
    // SETTING_NOT_IN_ORGANISATION.
    let request = lookup_request(
        &nhs,
        pb::AccessKind::Unscheduled,
        "RZZ01",
        pb::SettingType::EmergencyDepartment,
        "",
    );
    let status = ChildProtectionClient::new(sys.channel())
        .lookup_child(with_token(request, &t.clinician))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "SETTING_NOT_IN_ORGANISATION")
    );
    // A token without any activity, on every other kind of call.
    let nobody = sys.token("nobody", LA, "R9000", &[]);
    let status = LocalAuthorityClient::new(sys.channel())
        .list_flags(with_token(pb::ListFlagsRequest::default(), &nobody))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "MISSING_ACTIVITY");
    // Invalid input is neither decided nor audited.
    let status = lookup(&sys, &t.clinician, "123").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "nhs_number"
    );

    let request = pb::ListAuditEventsRequest {
        nhs_number: nhs.clone(),
        page_size: 100,
        ..Default::default()
    };
    let events = AuditClient::new(sys.channel())
        .list_audit_events(with_token(request, &t.auditor))
        .await
        .unwrap()
        .into_inner()
        .events;
    let reasons: Vec<_> = events
        .iter()
        .map(|e| (e.outcome(), e.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (pb::AuditOutcome::Denied, "MISSING_ACTIVITY"),
            (pb::AuditOutcome::Denied, "ORGANISATION_NOT_ONBOARDED"),
            (pb::AuditOutcome::Denied, "SETTING_NOT_IN_ORGANISATION"),
            // Reading a child's audit trail is itself an access, recorded like any other.
            (pb::AuditOutcome::Allowed, ""),
        ],
        "{events:?}"
    );
    assert!(
        events[..3]
            .iter()
            .all(|e| e.action == "LookupChild" && !e.hash.is_empty())
    );
    assert_eq!(events[3].action, "ListAuditEvents");
    let verify = AuditClient::new(sys.channel())
        .verify_audit_log(with_token(pb::VerifyAuditLogRequest::default(), &t.auditor))
        .await
        .unwrap()
        .into_inner();
    assert!(verify.ok, "{verify:?}");
}

#[tokio::test]
async fn notifications_reach_only_the_owning_la_and_never_come_from_silent_reads() {
    let (sys, t) = started().await;
    let (mine, theirs) = (child(3), child(4));
    upload(
        &sys,
        &t.la,
        "u-mine",
        vec![record(&mine, pb::FlagType::Lac, "2024-06-01")],
    )
    .await;
    upload(
        &sys,
        &t.other_la,
        "u-theirs",
        vec![record(&theirs, pb::FlagType::Cpp, "2024-06-01")],
    )
    .await;

    // A silent read from scheduled care: audited, nothing recorded, nobody notified.
    let request = lookup_request(
        &mine,
        pb::AccessKind::Scheduled,
        "RQX02",
        pb::SettingType::GpPractice,
        "",
    );
    let silent = ChildProtectionClient::new(sys.channel())
        .lookup_child(with_token(request, &t.gp))
        .await
        .unwrap()
        .into_inner();
    assert!(silent.flagged);
    assert!(
        notifications(&sys, &t.la).await.is_empty(),
        "a silent read notified the LA"
    );

    let seen = lookup(&sys, &t.clinician, &mine).await.unwrap();
    let mine_notes = notifications(&sys, &t.la).await;
    assert_eq!(mine_notes.len(), 1, "{mine_notes:?}");
    let n = &mine_notes[0];
    assert_eq!(
        (n.kind(), n.nhs_number.as_str(), n.lookup_id.as_str()),
        (
            pb::NotificationKind::Access,
            mine.as_str(),
            seen.lookup_id.as_str()
        )
    );
    assert_eq!(
        (
            n.ods_code.as_str(),
            n.user_id.as_str(),
            n.role_code.as_str()
        ),
        (SITE, "dr.jones", "R8000")
    );
    assert_eq!(n.setting_type(), pb::SettingType::EmergencyDepartment);
    assert!(
        notifications(&sys, &t.other_la).await.is_empty(),
        "another LA was told about a child it does not hold"
    );

    // The silent read recorded no attendance: the next notifying lookup counts one (the first).
    let again = lookup(&sys, &t.clinician, &mine).await.unwrap();
    assert_eq!(again.attendance.unwrap().last_30_days, 1);
}

#[tokio::test]
async fn a_replayed_request_id_returns_the_first_answer_and_records_nothing_twice() {
    let (sys, t) = started().await;
    let nhs = child(5);
    upload(
        &sys,
        &t.la,
        "u1",
        vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    )
    .await;
    let mut client = ChildProtectionClient::new(sys.channel());
    let request = lookup_request(
        &nhs,
        pb::AccessKind::Unscheduled,
        SITE,
        pb::SettingType::EmergencyDepartment,
        "req-42",
    );
    let first = client
        .lookup_child(with_token(request.clone(), &t.clinician))
        .await
        .unwrap()
        .into_inner();
    let replay = client
        .lookup_child(with_token(request.clone(), &t.clinician))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.lookup_id, replay.lookup_id);
    assert_eq!(first, replay, "a replay returns the first answer");
    assert_eq!(
        notifications(&sys, &t.la).await.len(),
        1,
        "a replay notified twice"
    );

    // The same key from another user is a different request.
    let colleague = sys.token("dr.smith", TRUST, "R8001", &["B0107"]);
    let theirs = client
        .lookup_child(with_token(request.clone(), &colleague))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.lookup_id, first.lookup_id);
    assert_eq!(notifications(&sys, &t.la).await.len(), 2);

    // The same key with a different request is invalid.
    let mut changed = request.clone();
    changed.setting.as_mut().unwrap().setting_type = pb::SettingType::MinorInjuryUnit.into();
    let status = client
        .lookup_child(with_token(changed, &t.clinician))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Only two attendances exist (first and colleague's): a fresh lookup counts them.
    let fresh = lookup(&sys, &t.clinician, &nhs).await.unwrap();
    assert_eq!(fresh.attendance.unwrap().last_30_days, 2);
}

#[tokio::test]
async fn registry_down_is_unavailable_with_retry_info_never_not_flagged() {
    let (mut sys, t) = started().await;
    let nhs = child(6);
    upload(
        &sys,
        &t.la,
        "u1",
        vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    )
    .await;
    sys.kill("flag-service");
    for _ in 0..5 {
        match lookup(&sys, &t.clinician, &nhs).await {
            Ok(answer) => panic!("answered while the registry was down: {answer:?}"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.get_details_retry_info().is_some(),
                    "UNAVAILABLE without RetryInfo"
                );
            }
        }
    }
    sys.restart("flag-service").await;
    assert!(lookup(&sys, &t.clinician, &nhs).await.unwrap().flagged);
}

#[tokio::test]
async fn access_service_down_is_unavailable_and_no_data() {
    let (mut sys, t) = started().await;
    let nhs = child(7);
    upload(
        &sys,
        &t.la,
        "u1",
        vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    )
    .await;
    sys.kill("access-service");
    let status = lookup(&sys, &t.clinician, &nhs).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    sys.restart("access-service").await;
    assert!(lookup(&sys, &t.clinician, &nhs).await.unwrap().flagged);
}

#[tokio::test]
async fn attendance_down_still_answers_the_flags_and_the_reconciler_records_the_visit_later() {
    let (mut sys, t) = started().await;
    let nhs = child(8);
    upload(
        &sys,
        &t.la,
        "u1",
        vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    )
    .await;
    sys.kill("attendance-service");
    let degraded = lookup(&sys, &t.clinician, &nhs).await.unwrap();
    assert!(degraded.flagged, "the flags must still be shown");
    assert!(!degraded.attendance.as_ref().unwrap().available);
    // The notification half of the obligation was done inline.
    assert_eq!(notifications(&sys, &t.la).await.len(), 1);

    sys.restart("attendance-service").await;
    // The reconciler finds the pending obligation and records the attendance.
    let mut recorded = false;
    for _ in 0..100 {
        let now = lookup(&sys, &t.clinician, &nhs).await.unwrap();
        let summary = now.attendance.unwrap();
        // Each probe is itself a recorded attendance; the degraded one must be among them.
        if summary.available
            && summary
                .recent
                .iter()
                .any(|a| a.attended_at == degraded.looked_up_at)
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        recorded,
        "the reconciler never recorded the attendance:\n{}",
        sys.log("gateway")
    );
    assert_eq!(
        notifications(&sys, &t.la)
            .await
            .iter()
            .filter(|n| n.lookup_id == degraded.lookup_id)
            .count(),
        1,
        "notified twice"
    );
}

#[tokio::test]
async fn a_watch_resumes_from_its_cursor_across_a_gateway_restart_with_nothing_lost_or_repeated() {
    let (mut sys, t) = started().await;
    let nhs = child(9);
    upload(
        &sys,
        &t.la,
        "u1",
        vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    )
    .await;
    let mut la = LocalAuthorityClient::new(sys.channel());
    let mut watch = la
        .watch_notifications(with_token(
            pb::WatchNotificationsRequest {
                after_cursor: 0,
                from_start: true,
            },
            &t.la,
        ))
        .await
        .unwrap()
        .into_inner();
    lookup(&sys, &t.clinician, &nhs).await.unwrap();
    lookup(&sys, &t.clinician, &nhs).await.unwrap();
    let a = watch.message().await.unwrap().unwrap();
    let b = watch.message().await.unwrap().unwrap();
    assert_eq!((a.cursor, b.cursor), (1, 2));

    // SIGTERM ends the watch with UNAVAILABLE; the client resumes from its last cursor.
    let status = sys.terminate("gateway");
    assert!(status.success(), "the gateway exited with {status:?}");
    let ended = watch.message().await;
    assert!(
        matches!(&ended, Err(s) if s.code() == Code::Unavailable),
        "{ended:?}"
    );
    sys.restart("gateway").await;
    lookup(&sys, &t.clinician, &nhs).await.unwrap();
    let mut la = LocalAuthorityClient::new(sys.channel());
    let mut resumed = la
        .watch_notifications(with_token(
            pb::WatchNotificationsRequest {
                after_cursor: b.cursor,
                from_start: false,
            },
            &t.la,
        ))
        .await
        .unwrap()
        .into_inner();
    let c = resumed.message().await.unwrap().unwrap();
    assert_eq!(c.cursor, 3, "a notification was lost or repeated");
}

#[tokio::test]
async fn a_council_system_certificate_uploads_unattended_and_is_refused_lookups() {
    let sys = System::start(Options {
        postgres: ON_POSTGRES,
        public_tls: true,
        ..Options::default()
    })
    .await;
    let t = tokens(&sys);
    onboard(&sys, &t).await;
    let san = "spiffe://councils.example/la/706/case-system";
    let request = pb::RegisterSystemRequest {
        san: san.into(),
        ods_code: LA.into(),
        activities: vec!["CPIS_LA_MANAGE".into()],
    };
    AdministrationClient::new(sys.channel())
        .register_system(with_token(request, &t.admin))
        .await
        .unwrap();

    let cert = sys.system_ca.client(&sys.data_dir(), "council-system", san);
    let channel = sys.channel_as(Some(&cert));
    let nhs = child(10);
    let mut la = LocalAuthorityClient::new(channel.clone());
    let message = pb::UploadFlagsRequest {
        upload_id: "nightly".into(),
        records: vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    };
    let report = la
        .upload_flags(tokio_stream::iter(vec![message]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.accepted, 1, "{report:?}");

    let request = lookup_request(
        &nhs,
        pb::AccessKind::Unscheduled,
        SITE,
        pb::SettingType::EmergencyDepartment,
        "",
    );
    let status = ChildProtectionClient::new(channel)
        .lookup_child(request)
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::PermissionDenied, "MISSING_ACTIVITY")
    );

    // An unregistered certificate is nobody.
    let stranger = sys.system_ca.client(
        &sys.data_dir(),
        "stranger",
        "spiffe://councils.example/unknown",
    );
    let status = LocalAuthorityClient::new(sys.channel_as(Some(&stranger)))
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn forged_principal_metadata_sent_straight_to_a_backend_is_refused() {
    let (sys, _t) = started().await;
    use cpis_proto::access::Principal;
    use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
    let forged = Principal {
        user_id: "mallory".into(),
        ods_code: LA.into(),
        activities: vec!["CPIS_LA_MANAGE".into()],
        ..Default::default()
    };
    // A certificate from our own CA, but not the gateway's.
    let other = sys.ca.server(&sys.data_dir(), "attendance-service-2");
    let mut direct = FlagRegistryClient::new(sys.backend_channel("flag-service", Some(&other)));
    let mut request = Request::new(pb::ListFlagsRequest::default());
    platform::principal::attach(request.metadata_mut(), &forged);
    let status = direct.list_flags(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // No certificate at all: not even a connection.
    let mut bare = FlagRegistryClient::new(sys.backend_channel("flag-service", None));
    assert!(
        bare.list_flags(pb::ListFlagsRequest::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn every_other_rpc_of_the_public_api_works_through_the_gateway() {
    let (sys, t) = started().await;
    let (a, b) = (child(11), child(12));
    let mut la = LocalAuthorityClient::new(sys.channel());
    let mut admin = AdministrationClient::new(sys.channel());
    let mut audit = AuditClient::new(sys.channel());
    upload(
        &sys,
        &t.la,
        "u1",
        vec![
            record(&a, pb::FlagType::Cpp, "2024-01-01"),
            record(&b, pb::FlagType::Lac, "2024-02-01"),
        ],
    )
    .await;

    // ListFlags: the LA's own, paginated.
    let page = la
        .list_flags(with_token(
            pb::ListFlagsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &t.la,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.flags.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let rest = la
        .list_flags(with_token(
            pb::ListFlagsRequest {
                page_size: 1,
                page_token: page.next_page_token,
            },
            &t.la,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.flags.len(), 1);
    let other = la
        .list_flags(with_token(pb::ListFlagsRequest::default(), &t.other_la))
        .await
        .unwrap()
        .into_inner();
    assert!(other.flags.is_empty(), "an LA sees only its own flags");

    // EndFlag: shown ended (still visible for a year); another LA gets NOT_FOUND exactly as
    // for an absent flag.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let end = pb::EndFlagRequest {
        nhs_number: a.clone(),
        flag_type: pb::FlagType::Cpp.into(),
        start_date: "2024-01-01".into(),
        end_date: yesterday.clone(),
    };
    let ended = la
        .end_flag(with_token(end.clone(), &t.la))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ended.end_date.as_str(), ended.active),
        (yesterday.as_str(), false)
    );
    let theirs = la
        .end_flag(with_token(end.clone(), &t.other_la))
        .await
        .unwrap_err();
    let mut absent = end.clone();
    absent.start_date = "2020-01-01".into();
    let missing = la.end_flag(with_token(absent, &t.la)).await.unwrap_err();
    assert_eq!(
        (theirs.code(), missing.code()),
        (Code::NotFound, Code::NotFound)
    );
    assert_eq!(
        theirs.message(),
        missing.message(),
        "another LA's flag must look absent"
    );

    // DeleteFlag: gone from lookups at once.
    let delete = pb::DeleteFlagRequest {
        nhs_number: b.clone(),
        flag_type: pb::FlagType::Lac.into(),
        start_date: "2024-02-01".into(),
    };
    la.delete_flag(with_token(delete.clone(), &t.la))
        .await
        .unwrap();
    assert!(!lookup(&sys, &t.clinician, &b).await.unwrap().flagged);
    assert_eq!(
        la.delete_flag(with_token(delete, &t.la))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // AcknowledgeNotifications after a notifying lookup.
    lookup(&sys, &t.clinician, &a).await.unwrap();
    let ack = la
        .acknowledge_notifications(with_token(
            pb::AcknowledgeNotificationsRequest { up_to_cursor: 1 },
            &t.la,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.acknowledged_cursor, ack.backlog), (1, 0));
    let after_ack = la
        .list_notifications(with_token(pb::ListNotificationsRequest::default(), &t.la))
        .await
        .unwrap()
        .into_inner();
    assert!(
        after_ack.notifications.is_empty(),
        "after_cursor 0 starts after the acknowledged cursor"
    );

    // Restrictions: later uploads of the number are refused as sensitive; the owning LA is told.
    let restriction = admin
        .set_restriction(with_token(
            pb::SetRestrictionRequest {
                nhs_number: a.clone(),
                reason: "S-flag on PDS".into(),
            },
            &t.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restriction.notifications_created, 1);
    let report = upload(
        &sys,
        &t.la,
        "u2",
        vec![record(&a, pb::FlagType::Lac, "2024-05-01")],
    )
    .await;
    assert_eq!(report.results[0].code(), pb::RecordCode::SensitiveRecord);
    assert!(
        lookup(&sys, &t.clinician, &a).await.unwrap().flagged,
        "held flags stay visible"
    );
    admin
        .clear_restriction(with_token(
            pb::ClearRestrictionRequest {
                nhs_number: a.clone(),
            },
            &t.admin,
        ))
        .await
        .unwrap();
    let report = upload(
        &sys,
        &t.la,
        "u3",
        vec![record(&a, pb::FlagType::Lac, "2024-05-01")],
    )
    .await;
    assert_eq!(report.results[0].code(), pb::RecordCode::Accepted);

    // Inactive numbers notify the owning LA.
    let inactive = admin
        .mark_nhs_number_inactive(with_token(
            pb::MarkNhsNumberInactiveRequest {
                nhs_number: a.clone(),
                superseded_by: child(13),
            },
            &t.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(inactive.notifications_created >= 1);
    let kinds: Vec<_> = notifications(&sys, &t.la)
        .await
        .iter()
        .map(|n| n.kind())
        .collect();
    assert!(
        kinds.contains(&pb::NotificationKind::Restricted)
            && kinds.contains(&pb::NotificationKind::NhsNumberInactive),
        "{kinds:?}"
    );

    // Organisations and systems.
    let orgs = admin
        .list_organisations(with_token(
            pb::ListOrganisationsRequest::default(),
            &t.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        orgs.organisations
            .iter()
            .any(|o| o.ods_code == LA && o.onboarded)
    );
    let san = "spiffe://councils.example/la/709";
    admin
        .register_system(with_token(
            pb::RegisterSystemRequest {
                san: san.into(),
                ods_code: OTHER_LA.into(),
                activities: vec!["CPIS_LA_MANAGE".into()],
            },
            &t.admin,
        ))
        .await
        .unwrap();
    let bad = admin
        .register_system(with_token(
            pb::RegisterSystemRequest {
                san: san.into(),
                ods_code: OTHER_LA.into(),
                activities: vec!["B0107".into()],
            },
            &t.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bad.code(),
        Code::InvalidArgument,
        "a system may hold CPIS_LA_MANAGE only"
    );
    let systems = admin
        .list_systems(with_token(pb::ListSystemsRequest::default(), &t.admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(systems.systems.len(), 1);
    admin
        .remove_system(with_token(
            pb::RemoveSystemRequest { san: san.into() },
            &t.admin,
        ))
        .await
        .unwrap();
    let systems = admin
        .list_systems(with_token(pb::ListSystemsRequest::default(), &t.admin))
        .await
        .unwrap()
        .into_inner();
    assert!(systems.systems.is_empty());

    // Audit: checkpoint, then verify against it.
    let checkpoint = audit
        .get_checkpoint(with_token((), &t.auditor))
        .await
        .unwrap()
        .into_inner();
    assert!(
        checkpoint.sequence > 0 && checkpoint.hash.len() == 32 && !checkpoint.signature.is_empty()
    );
    let verified = audit
        .verify_audit_log(with_token(
            pb::VerifyAuditLogRequest {
                checkpoint: Some(checkpoint.clone()),
            },
            &t.auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        verified.ok && verified.records_checked >= checkpoint.sequence,
        "{verified:?}"
    );
    // A clinician may not read the audit log.
    let status = audit
        .get_checkpoint(with_token((), &t.clinician))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "MISSING_ACTIVITY");
}


#[tokio::test]
async fn sigterm_lets_a_unary_call_finish_ends_watches_unavailable_and_exits_zero() {
    let (mut sys, t) = started().await;
    let nhs = child(15);
    upload(
        &sys,
        &t.la,
        "u1",
        vec![record(&nhs, pb::FlagType::Cpp, "2024-01-01")],
    )
    .await;
    let mut la = LocalAuthorityClient::new(sys.channel());
    let mut watch = la
        .watch_notifications(with_token(
            pb::WatchNotificationsRequest {
                after_cursor: 0,
                from_start: true,
            },
            &t.la,
        ))
        .await
        .unwrap()
        .into_inner();

    // Freeze the registry so a lookup is held in flight inside the gateway.
    sys.signal("flag-service", "STOP");
    let in_flight = {
        let channel = sys.channel();
        let token = t.clinician.clone();
        let nhs = nhs.clone();
        tokio::spawn(async move {
            let request = lookup_request(
                &nhs,
                pb::AccessKind::Unscheduled,
                SITE,
                pb::SettingType::EmergencyDepartment,
                "",
            );
            ChildProtectionClient::new(channel)
                .lookup_child(with_token(request, &token))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the lookup should be waiting on the frozen registry"
    );

    let started = std::time::Instant::now();
    let terminate = {
        let pid = sys.pid("gateway");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
        })
    };
    terminate.await.unwrap();
    // The watch ends at once with UNAVAILABLE so its client can resume elsewhere.
    let ended = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("the watch did not end");
    assert!(
        matches!(&ended, Err(s) if s.code() == Code::Unavailable),
        "{ended:?}"
    );

    // The registry comes back; the call in flight completes with a real answer.
    sys.signal("flag-service", "CONT");
    let answer = in_flight
        .await
        .unwrap()
        .expect("the call in flight must complete")
        .into_inner();
    assert!(answer.flagged);
    let status = sys.wait_exit("gateway");
    assert!(status.success(), "exited with {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5 + 2),
        "not within the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_drain() {
    let (mut sys, t) = started().await;
    let nhs = child(16);
    sys.signal("flag-service", "STOP");
    let held = {
        let channel = sys.channel();
        let token = t.clinician.clone();
        tokio::spawn(async move {
            let request = lookup_request(&nhs, pb::AccessKind::Unscheduled, SITE, pb::SettingType::EmergencyDepartment, "");
            ChildProtectionClient::new(channel).lookup_child(with_token(request, &token)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    sys.signal("gateway", "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sys.signal("gateway", "TERM");
    let status = tokio::task::block_in_place(|| sys.wait_exit("gateway"));
    assert!(started.elapsed() < Duration::from_secs(3), "the second signal did not cut the drain short");
    assert!(!status.success(), "an interrupted drain is not a clean exit: {status:?}");
    sys.signal("flag-service", "CONT");
    let _ = held.await;
}
