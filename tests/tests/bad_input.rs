//! Bad input, the way a careless integrator or an attacker sends it, against `cpis dev` (the
//! four services in one process, in-process): a table of malformed requests for every public
//! rpc, each with the code (and field path) it must answer; garbage bytes, cut frames and the
//! wrong content type on the wire; expired, forged, `alg=none` and wrong-audience tokens. None
//! may answer INTERNAL, and none may write anything: no audit record, flag, notification,
//! attendance, organisation or system.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cpis_cli::dev::{self, DevArgs};
use cpis_proto::gateway as pb;
use http_body_util::BodyExt;
use pb::administration_client::AdministrationClient;
use pb::audit_client::AuditClient;
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use platform::domain::NhsNumber;
use platform::shutdown::Shutdown;
use prost::Message;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use tower::ServiceExt;

const ADMIN_ORG: &str = "X26";
const LA: &str = "706";
const TRUST: &str = "RQX";
const SITE: &str = "RQX01";
/// Users whose own reads (to count what exists) are left out of the audit count.
const OBSERVERS: [&str; 4] = [
    "observer.la",
    "observer.gp",
    "observer.admin",
    "observer.auditor",
];

fn child(n: u32) -> String {
    (n..)
        .find_map(|k| NhsNumber::from_first_nine(999_200_000 + k))
        .unwrap()
        .as_str()
        .to_owned()
}

/// The same number with a wrong check digit.
fn bad_check_digit(nhs: &str) -> String {
    let last = nhs.as_bytes()[9] - b'0';
    format!("{}{}", &nhs[..9], (last + 1) % 10)
}

struct Dev {
    dir: tempfile::TempDir,
    channel: Channel,
    _stop: platform::shutdown::ShutdownTrigger,
}

impl Dev {
    async fn start() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let args = DevArgs {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            demo: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        };
        let system = dev::start(&args, shutdown).await.unwrap();
        common::wait_for_health(
            system.gateway_addr,
            "",
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
        .await;
        let channel = common::channel(system.gateway_addr).await;
        Dev {
            dir,
            channel,
            _stop: trigger,
        }
    }

    fn token(&self, user: &str, org: &str, activities: &[&str]) -> String {
        cpis_cli::token::mint(&cpis_cli::token::TokenArgs {
            user: user.into(),
            name: None,
            org: org.into(),
            role: "R8000".into(),
            activities: activities.iter().map(|a| a.to_string()).collect(),
            extra_roles: Vec::new(),
            aal: 3,
            ttl: Duration::from_secs(3600),
            data_dir: self.dir.path().to_owned(),
        })
        .unwrap()
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(30))
}

struct Tokens {
    admin: String,
    auditor: String,
    la: String,
    clinician: String,
    observer_la: String,
    observer_gp: String,
    observer_admin: String,
    observer_auditor: String,
}

async fn prepared() -> (Dev, Tokens, String) {
    let dev = Dev::start().await;
    let t = Tokens {
        admin: dev.token("admin", ADMIN_ORG, &["CPIS_ADMIN"]),
        auditor: dev.token("caldicott", ADMIN_ORG, &["CPIS_AUDIT"]),
        la: dev.token("la.worker", LA, &["CPIS_LA_MANAGE"]),
        clinician: dev.token("dr.jones", TRUST, &["B0107"]),
        observer_la: dev.token(OBSERVERS[0], LA, &["CPIS_LA_MANAGE"]),
        observer_gp: dev.token(OBSERVERS[1], TRUST, &["B0170"]),
        observer_admin: dev.token(OBSERVERS[2], ADMIN_ORG, &["CPIS_ADMIN"]),
        observer_auditor: dev.token(OBSERVERS[3], ADMIN_ORG, &["CPIS_AUDIT"]),
    };
    let mut admin = AdministrationClient::new(dev.channel.clone());
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
        admin
            .upsert_organisation(with_token(request, &t.admin))
            .await
            .unwrap();
    }
    // Something to find, so "nothing added" is checked against real rows.
    let known = child(1);
    let upload = pb::UploadFlagsRequest {
        upload_id: "seed".into(),
        records: vec![record(&known)],
    };
    let report = LocalAuthorityClient::new(dev.channel.clone())
        .upload_flags(with_token(tokio_stream::iter([upload]), &t.la))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.accepted, 1, "{report:?}");
    ChildProtectionClient::new(dev.channel.clone())
        .lookup_child(with_token(lookup(&known), &t.clinician))
        .await
        .unwrap();
    (dev, t, known)
}

fn record(nhs: &str) -> pb::FlagRecord {
    pb::FlagRecord {
        nhs_number: nhs.into(),
        flag_type: pb::FlagType::Cpp.into(),
        start_date: "2025-01-10".into(),
        end_date: String::new(),
        due_date: String::new(),
        emergency_phone: "020 7364 4079".into(),
        office_hours_phone: String::new(),
        email: String::new(),
    }
}

fn lookup(nhs: &str) -> pb::LookupChildRequest {
    pb::LookupChildRequest {
        nhs_number: nhs.into(),
        access_kind: pb::AccessKind::Unscheduled.into(),
        setting: Some(pb::Setting {
            ods_code: SITE.into(),
            setting_type: pb::SettingType::EmergencyDepartment.into(),
        }),
        request_id: String::new(),
    }
}

/// Everything a bad request could have written, counted through the public API.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    /// Action, user and outcome of each record (the auditor's own reads left out).
    audit_records: Vec<String>,
    flags: usize,
    notifications: usize,
    attendances_of_known_child: u32,
    organisations: usize,
    systems: usize,
}

async fn written(dev: &Dev, t: &Tokens, known: &str) -> Written {
    let mut audit_records = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAuditEventsRequest {
            page_size: 1000,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = AuditClient::new(dev.channel.clone())
            .list_audit_events(with_token(request, &t.observer_auditor))
            .await
            .unwrap()
            .into_inner();
        audit_records.extend(
            page.events
                .iter()
                .filter(|e| !OBSERVERS.contains(&e.user_id.as_str()))
                .map(|e| format!("{} by {} {:?}", e.action, e.user_id, e.outcome())),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut la = LocalAuthorityClient::new(dev.channel.clone());
    let flags = la
        .list_flags(with_token(
            pb::ListFlagsRequest {
                page_size: 1000,
                page_token: String::new(),
            },
            &t.observer_la,
        ))
        .await
        .unwrap()
        .into_inner()
        .flags
        .len();
    let notifications = la
        .list_notifications(with_token(
            pb::ListNotificationsRequest {
                from_start: true,
                page_size: 1000,
                ..Default::default()
            },
            &t.observer_la,
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications
        .len();
    // A silent read records no attendance itself.
    let mut silent = lookup(known);
    silent.access_kind = pb::AccessKind::Scheduled.into();
    silent.setting = Some(pb::Setting {
        ods_code: "RQX02".into(),
        setting_type: pb::SettingType::GpPractice.into(),
    });
    let attendance = ChildProtectionClient::new(dev.channel.clone())
        .lookup_child(with_token(silent, &t.observer_gp))
        .await
        .unwrap()
        .into_inner()
        .attendance
        .unwrap();
    assert!(attendance.available);
    let mut admin = AdministrationClient::new(dev.channel.clone());
    let organisations = admin
        .list_organisations(with_token(
            pb::ListOrganisationsRequest {
                page_size: 1000,
                page_token: String::new(),
            },
            &t.observer_admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .organisations
        .len();
    let systems = admin
        .list_systems(with_token(
            pb::ListSystemsRequest {
                page_size: 1000,
                page_token: String::new(),
            },
            &t.observer_admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .systems
        .len();
    Written {
        audit_records,
        flags,
        notifications,
        attendances_of_known_child: attendance.last_365_days,
        organisations,
        systems,
    }
}

/// One malformed call of the table.
enum Call {
    Lookup(pb::LookupChildRequest),
    Upload(Vec<pb::UploadFlagsRequest>),
    EndFlag(pb::EndFlagRequest),
    DeleteFlag(pb::DeleteFlagRequest),
    ListFlags(pb::ListFlagsRequest),
    ListNotifications(pb::ListNotificationsRequest),
    Watch(pb::WatchNotificationsRequest),
    ListAudit(pb::ListAuditEventsRequest),
    Verify(pb::VerifyAuditLogRequest),
    Upsert(pb::UpsertOrganisationRequest),
    ListOrganisations(pb::ListOrganisationsRequest),
    Register(pb::RegisterSystemRequest),
    ListSystems(pb::ListSystemsRequest),
    Remove(pb::RemoveSystemRequest),
    Restrict(pb::SetRestrictionRequest),
    Unrestrict(pb::ClearRestrictionRequest),
    Inactive(pb::MarkNhsNumberInactiveRequest),
}

async fn send(dev: &Dev, t: &Tokens, call: Call) -> Result<(), Status> {
    let ch = dev.channel.clone();
    match call {
        Call::Lookup(r) => ChildProtectionClient::new(ch)
            .lookup_child(with_token(r, &t.clinician))
            .await
            .map(drop),
        Call::Upload(messages) => LocalAuthorityClient::new(ch)
            .upload_flags(with_token(tokio_stream::iter(messages), &t.la))
            .await
            .map(drop),
        Call::EndFlag(r) => LocalAuthorityClient::new(ch)
            .end_flag(with_token(r, &t.la))
            .await
            .map(drop),
        Call::DeleteFlag(r) => LocalAuthorityClient::new(ch)
            .delete_flag(with_token(r, &t.la))
            .await
            .map(drop),
        Call::ListFlags(r) => LocalAuthorityClient::new(ch)
            .list_flags(with_token(r, &t.la))
            .await
            .map(drop),
        Call::ListNotifications(r) => LocalAuthorityClient::new(ch)
            .list_notifications(with_token(r, &t.la))
            .await
            .map(drop),
        Call::Watch(r) => {
            let mut stream = LocalAuthorityClient::new(ch)
                .watch_notifications(with_token(r, &t.la))
                .await?
                .into_inner();
            // An accepted watch would wait for news: the error must come first.
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(result) => result.map(drop),
                Err(_) => Ok(()),
            }
        }
        Call::ListAudit(r) => AuditClient::new(ch)
            .list_audit_events(with_token(r, &t.auditor))
            .await
            .map(drop),
        Call::Verify(r) => AuditClient::new(ch)
            .verify_audit_log(with_token(r, &t.auditor))
            .await
            .map(drop),
        Call::Upsert(r) => AdministrationClient::new(ch)
            .upsert_organisation(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::ListOrganisations(r) => AdministrationClient::new(ch)
            .list_organisations(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::Register(r) => AdministrationClient::new(ch)
            .register_system(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::ListSystems(r) => AdministrationClient::new(ch)
            .list_systems(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::Remove(r) => AdministrationClient::new(ch)
            .remove_system(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::Restrict(r) => AdministrationClient::new(ch)
            .set_restriction(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::Unrestrict(r) => AdministrationClient::new(ch)
            .clear_restriction(with_token(r, &t.admin))
            .await
            .map(drop),
        Call::Inactive(r) => AdministrationClient::new(ch)
            .mark_nhs_number_inactive(with_token(r, &t.admin))
            .await
            .map(drop),
    }
}

fn upload_message(upload_id: &str, records: Vec<pb::FlagRecord>) -> pb::UploadFlagsRequest {
    pb::UploadFlagsRequest {
        upload_id: upload_id.into(),
        records,
    }
}

fn records(n: usize) -> Vec<pb::FlagRecord> {
    let one = record(&child(500));
    vec![one; n]
}

fn lookup_with(change: impl FnOnce(&mut pb::LookupChildRequest)) -> Call {
    let mut r = lookup(&child(2));
    change(&mut r);
    Call::Lookup(r)
}

fn end_flag(nhs: &str, flag_type: i32, start: &str, end: &str) -> Call {
    Call::EndFlag(pb::EndFlagRequest {
        nhs_number: nhs.into(),
        flag_type,
        start_date: start.into(),
        end_date: end.into(),
    })
}

fn delete_flag(nhs: &str, flag_type: i32, start: &str) -> Call {
    Call::DeleteFlag(pb::DeleteFlagRequest {
        nhs_number: nhs.into(),
        flag_type,
        start_date: start.into(),
    })
}

fn organisation(ods: &str, name: &str, kind: i32) -> Call {
    Call::Upsert(pb::UpsertOrganisationRequest {
        ods_code: ods.into(),
        name: name.into(),
        kind,
        onboarded: true,
    })
}

fn system(san: &str, ods: &str, activities: &[&str]) -> Call {
    Call::Register(pb::RegisterSystemRequest {
        san: san.into(),
        ods_code: ods.into(),
        activities: activities.iter().map(|a| a.to_string()).collect(),
    })
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// In the table's field column: a message larger than its RPC allows, answered
/// `RESOURCE_EXHAUSTED` with ErrorInfo reason `MESSAGE_TOO_LARGE` before it is decoded.
const TOO_LARGE: &str = "(MESSAGE_TOO_LARGE)";

/// (what, call, the field path every answer must name).
fn table() -> Vec<(&'static str, Call, &'static str)> {
    let nhs = child(3);
    let cpp = pb::FlagType::Cpp as i32;
    let ten_kb = "r".repeat(10 * 1024);
    let one_mb = "n".repeat(1024 * 1024);
    let many = |n: usize, per: usize| -> Vec<pb::UploadFlagsRequest> {
        let mut left = n;
        let mut out = Vec::new();
        while left > 0 {
            let k = left.min(per);
            out.push(upload_message("big", records(k)));
            left -= k;
        }
        out
    };
    vec![
        // ChildProtection.LookupChild
        (
            "lookup: NHS number too short",
            lookup_with(|r| r.nhs_number = "123".into()),
            "nhs_number",
        ),
        (
            "lookup: NHS number missing",
            lookup_with(|r| r.nhs_number.clear()),
            "nhs_number",
        ),
        (
            "lookup: NHS number with letters",
            lookup_with(|r| r.nhs_number = "94347659AB".into()),
            "nhs_number",
        ),
        (
            "lookup: NHS check digit wrong",
            lookup_with(|r| r.nhs_number = bad_check_digit(&child(2))),
            "nhs_number",
        ),
        (
            "lookup: access kind 99",
            lookup_with(|r| r.access_kind = 99),
            "access_kind",
        ),
        (
            "lookup: access kind unspecified",
            lookup_with(|r| r.access_kind = 0),
            "access_kind",
        ),
        (
            "lookup: setting missing",
            lookup_with(|r| r.setting = None),
            "setting",
        ),
        (
            "lookup: setting type 99",
            lookup_with(|r| r.setting.as_mut().unwrap().setting_type = 99),
            "setting.setting_type",
        ),
        (
            "lookup: setting type unspecified",
            lookup_with(|r| r.setting.as_mut().unwrap().setting_type = 0),
            "setting.setting_type",
        ),
        (
            "lookup: scheduled setting, unscheduled access",
            lookup_with(|r| {
                r.setting.as_mut().unwrap().setting_type = pb::SettingType::GpPractice.into()
            }),
            "setting.setting_type",
        ),
        (
            "lookup: site ODS code missing",
            lookup_with(|r| r.setting.as_mut().unwrap().ods_code.clear()),
            "setting.ods_code",
        ),
        (
            "lookup: site ODS code 1 MB",
            lookup_with(|r| r.setting.as_mut().unwrap().ods_code = one_mb.clone()),
            TOO_LARGE,
        ),
        (
            "lookup: request_id of 10 KB",
            lookup_with(|r| r.request_id = ten_kb.clone()),
            TOO_LARGE,
        ),
        (
            "lookup: request_id of 200 bytes",
            lookup_with(|r| r.request_id = "r".repeat(200)),
            "request_id",
        ),
        // LocalAuthority.UploadFlags: only the stream itself is an error
        ("upload: empty stream", Call::Upload(vec![]), "records"),
        (
            "upload: no record in the stream",
            Call::Upload(vec![upload_message("u-empty", vec![])]),
            "records",
        ),
        (
            "upload: upload_id missing",
            Call::Upload(vec![upload_message("", records(1))]),
            "upload_id",
        ),
        (
            "upload: upload_id of 10 KB",
            Call::Upload(vec![upload_message(&ten_kb, records(1))]),
            "upload_id",
        ),
        (
            "upload: upload_id changes",
            Call::Upload(vec![
                upload_message("u-a", records(1)),
                upload_message("u-b", records(1)),
            ]),
            "upload_id",
        ),
        (
            "upload: 5,001 records in one message",
            Call::Upload(vec![upload_message("u-5001", records(5_001))]),
            "records",
        ),
        (
            "upload: 50,001 records in one upload",
            Call::Upload(many(50_001, 5_000)),
            "records",
        ),
        (
            "upload: very long stream, 50,001 one-record messages",
            Call::Upload(many(50_001, 1)),
            "records",
        ),
        // LocalAuthority.EndFlag
        (
            "end: NHS number invalid",
            end_flag("12345", cpp, "2025-01-10", "2025-06-01"),
            "nhs_number",
        ),
        (
            "end: flag type unspecified",
            end_flag(&nhs, 0, "2025-01-10", "2025-06-01"),
            "flag_type",
        ),
        (
            "end: flag type 99",
            end_flag(&nhs, 99, "2025-01-10", "2025-06-01"),
            "flag_type",
        ),
        (
            "end: start date impossible",
            end_flag(&nhs, cpp, "2025-02-30", "2025-06-01"),
            "start_date",
        ),
        (
            "end: end date missing",
            end_flag(&nhs, cpp, "2025-01-10", ""),
            "end_date",
        ),
        (
            "end: end date not ISO",
            end_flag(&nhs, cpp, "2025-01-10", "01/06/2025"),
            "end_date",
        ),
        (
            "end: end before start",
            end_flag(&nhs, cpp, "2025-01-10", "2025-01-09"),
            "end_date",
        ),
        // LocalAuthority.DeleteFlag
        (
            "delete: NHS number missing",
            delete_flag("", cpp, "2025-01-10"),
            "nhs_number",
        ),
        (
            "delete: flag type 99",
            delete_flag(&nhs, 99, "2025-01-10"),
            "flag_type",
        ),
        (
            "delete: start date impossible",
            delete_flag(&nhs, cpp, "2025-13-01"),
            "start_date",
        ),
        // LocalAuthority.ListFlags, ListNotifications, WatchNotifications
        (
            "list flags: negative page size",
            Call::ListFlags(pb::ListFlagsRequest {
                page_size: -1,
                page_token: String::new(),
            }),
            "page_size",
        ),
        (
            "list flags: forged page token",
            Call::ListFlags(pb::ListFlagsRequest {
                page_size: 10,
                page_token: "not-a-token".into(),
            }),
            "page_token",
        ),
        (
            "list notifications: negative page size",
            Call::ListNotifications(pb::ListNotificationsRequest {
                page_size: i32::MIN,
                ..Default::default()
            }),
            "page_size",
        ),
        (
            "list notifications: from_start and a cursor",
            Call::ListNotifications(pb::ListNotificationsRequest {
                from_start: true,
                after_cursor: 3,
                ..Default::default()
            }),
            "from_start",
        ),
        (
            "list notifications: forged page token",
            Call::ListNotifications(pb::ListNotificationsRequest {
                page_token: ten_kb.clone(),
                ..Default::default()
            }),
            "page_token",
        ),
        (
            "watch: from_start and a cursor",
            Call::Watch(pb::WatchNotificationsRequest {
                from_start: true,
                after_cursor: 1,
            }),
            "from_start",
        ),
        // Audit.ListAuditEvents, VerifyAuditLog
        (
            "audit: NHS number invalid",
            Call::ListAudit(pb::ListAuditEventsRequest {
                nhs_number: bad_check_digit(&nhs),
                ..Default::default()
            }),
            "nhs_number",
        ),
        (
            "audit: ODS code invalid",
            Call::ListAudit(pb::ListAuditEventsRequest {
                ods_code: "R!X".into(),
                ..Default::default()
            }),
            "ods_code",
        ),
        (
            "audit: end before start",
            Call::ListAudit(pb::ListAuditEventsRequest {
                start_time: at(1_800_000_000),
                end_time: at(1_700_000_000),
                ..Default::default()
            }),
            "end_time",
        ),
        (
            "audit: negative page size",
            Call::ListAudit(pb::ListAuditEventsRequest {
                page_size: -7,
                ..Default::default()
            }),
            "page_size",
        ),
        (
            "audit: forged page token",
            Call::ListAudit(pb::ListAuditEventsRequest {
                page_token: "xyz".into(),
                ..Default::default()
            }),
            "page_token",
        ),
        (
            "verify: checkpoint hash not 32 bytes",
            Call::Verify(pb::VerifyAuditLogRequest {
                checkpoint: Some(pb::Checkpoint {
                    sequence: 1,
                    hash: vec![1, 2, 3],
                    signature: vec![0; 64],
                    key_id: "k".into(),
                }),
            }),
            "checkpoint.hash",
        ),
        // Administration
        (
            "organisation: ODS code missing",
            organisation("", "A council", pb::OrganisationKind::LocalAuthority as i32),
            "ods_code",
        ),
        (
            "organisation: ODS code of 9",
            organisation(
                "ABCDEFGHI",
                "A council",
                pb::OrganisationKind::LocalAuthority as i32,
            ),
            "ods_code",
        ),
        (
            "organisation: name missing",
            organisation("Z99", "", pb::OrganisationKind::LocalAuthority as i32),
            "name",
        ),
        (
            "organisation: name of 1 MB",
            organisation("Z99", &one_mb, pb::OrganisationKind::LocalAuthority as i32),
            TOO_LARGE,
        ),
        (
            "organisation: name of 201 characters",
            organisation(
                "Z99",
                &"n".repeat(201),
                pb::OrganisationKind::LocalAuthority as i32,
            ),
            "name",
        ),
        (
            "organisation: kind unspecified",
            organisation("Z99", "A council", 0),
            "kind",
        ),
        (
            "organisation: kind 99",
            organisation("Z99", "A council", 99),
            "kind",
        ),
        (
            "list organisations: negative page size",
            Call::ListOrganisations(pb::ListOrganisationsRequest {
                page_size: -1,
                page_token: String::new(),
            }),
            "page_size",
        ),
        (
            "system: SAN missing",
            system("", LA, &["CPIS_LA_MANAGE"]),
            "san",
        ),
        (
            "system: SAN of 10 KB",
            system(&ten_kb, LA, &["CPIS_LA_MANAGE"]),
            "san",
        ),
        (
            "system: ODS code invalid",
            system("spiffe://council/x", "7", &["CPIS_LA_MANAGE"]),
            "ods_code",
        ),
        (
            "system: lookup activity",
            system("spiffe://council/x", LA, &["B0107"]),
            "activities",
        ),
        (
            "list systems: negative page size",
            Call::ListSystems(pb::ListSystemsRequest {
                page_size: -1,
                page_token: String::new(),
            }),
            "page_size",
        ),
        (
            "remove system: SAN missing",
            Call::Remove(pb::RemoveSystemRequest { san: String::new() }),
            "san",
        ),
        (
            "restrict: NHS number invalid",
            Call::Restrict(pb::SetRestrictionRequest {
                nhs_number: "0000000000x".into(),
                reason: "court order".into(),
            }),
            "nhs_number",
        ),
        (
            "restrict: reason missing",
            Call::Restrict(pb::SetRestrictionRequest {
                nhs_number: nhs.clone(),
                reason: String::new(),
            }),
            "reason",
        ),
        (
            "restrict: reason of 1 MB",
            Call::Restrict(pb::SetRestrictionRequest {
                nhs_number: nhs.clone(),
                reason: one_mb.clone(),
            }),
            TOO_LARGE,
        ),
        (
            "restrict: reason of 501 characters",
            Call::Restrict(pb::SetRestrictionRequest {
                nhs_number: nhs.clone(),
                reason: "r".repeat(501),
            }),
            "reason",
        ),
        (
            "unrestrict: NHS number invalid",
            Call::Unrestrict(pb::ClearRestrictionRequest {
                nhs_number: bad_check_digit(&nhs),
            }),
            "nhs_number",
        ),
        (
            "inactive: NHS number invalid",
            Call::Inactive(pb::MarkNhsNumberInactiveRequest {
                nhs_number: "1".into(),
                superseded_by: String::new(),
            }),
            "nhs_number",
        ),
        (
            "inactive: superseded_by invalid",
            Call::Inactive(pb::MarkNhsNumberInactiveRequest {
                nhs_number: nhs.clone(),
                superseded_by: bad_check_digit(&nhs),
            }),
            "superseded_by",
        ),
        (
            "inactive: superseded by itself",
            Call::Inactive(pb::MarkNhsNumberInactiveRequest {
                nhs_number: nhs.clone(),
                superseded_by: nhs.clone(),
            }),
            "superseded_by",
        ),
    ]
}

/// The limit's other side: a very long stream of tiny messages that stays within it is accepted
/// whole (relayed one by one, its tiny HTTP/2 frames once made the registry's server drop the
/// connection as a flood, and the upload answered UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_long_stream_of_50000_one_record_messages_is_accepted_whole() {
    let (dev, t, _known) = prepared().await;
    let messages: Vec<_> = (0..50_000u32)
        .map(|i| upload_message("long", vec![record(&child(1_000 + i % 500))]))
        .collect();
    let report = LocalAuthorityClient::new(dev.channel.clone())
        .upload_flags(with_token(tokio_stream::iter(messages), &t.la))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.accepted, report.rejected), (50_000, 0));
    assert_eq!(report.results.len(), 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_is_invalid_argument_naming_its_field_and_writes_nothing() {
    let (dev, t, known) = prepared().await;
    let before = written(&dev, &t, &known).await;
    let mut wrong = Vec::new();
    for (what, call, field) in table() {
        match send(&dev, &t, call).await {
            Ok(()) => wrong.push(format!("{what}: answered OK")),
            Err(status) => {
                let fields: Vec<String> = status
                    .get_details_bad_request()
                    .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
                    .unwrap_or_default();
                // A field path may name a part of the field (`setting.ods_code`, `activities[0]`).
                let names = |f: &String| {
                    f == field
                        || f.starts_with(&format!("{field}."))
                        || f.starts_with(&format!("{field}["))
                };
                if field == TOO_LARGE {
                    let reason = status
                        .get_details_error_info()
                        .map(|i| i.reason)
                        .unwrap_or_default();
                    if status.code() != Code::ResourceExhausted
                        || reason != "MESSAGE_TOO_LARGE"
                        || status.get_details_retry_info().is_some()
                    {
                        wrong.push(format!(
                            "{what}: {:?} {reason:?} (wanted RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE)",
                            status.code()
                        ));
                    }
                } else if status.code() != Code::InvalidArgument || !fields.iter().any(names) {
                    wrong.push(format!(
                        "{what}: {:?} {:?} fields {fields:?} (wanted INVALID_ARGUMENT on {field})",
                        status.code(),
                        status.message().chars().take(200).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let mut after = written(&dev, &t, &known).await;
    // Refusals that can only come after the access decision, so that the decision (allowed)
    // is audited, though nothing is applied: an upload is decided at its first message. A
    // forged page token is not among them: the gateway checks it with the same validator as
    // the backend that issued it (platform::requests), before any decision.
    let decided: Vec<String> = [
        "UploadFlags by la.worker Allowed", // no record in the whole stream
        "UploadFlags by la.worker Allowed", // upload_id changes in the second message
        "UploadFlags by la.worker Allowed", // 50,001 records over 11 messages
        "UploadFlags by la.worker Allowed", // 50,001 one-record messages
    ]
    .map(String::from)
    .to_vec();
    let added = after.audit_records.split_off(before.audit_records.len());
    let mut sorted = added.clone();
    sorted.sort();
    let mut expected = decided.clone();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "audit records added by refused requests: {added:?}"
    );
    assert_eq!(after, before, "a bad request wrote something");
}

/// The public rpcs by path, each with a well-formed request (sent with a bad token, or as the
/// base of a damaged frame).
fn every_rpc(known: &str) -> Vec<(&'static str, Vec<u8>)> {
    let lookup = lookup(known).encode_to_vec();
    vec![
        ("/cpis.gateway.v1.ChildProtection/LookupChild", lookup),
        (
            "/cpis.gateway.v1.LocalAuthority/UploadFlags",
            upload_message("u", vec![record(known)]).encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.LocalAuthority/EndFlag",
            pb::EndFlagRequest {
                nhs_number: known.into(),
                flag_type: 1,
                start_date: "2025-01-10".into(),
                end_date: "2025-06-01".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.LocalAuthority/DeleteFlag",
            pb::DeleteFlagRequest {
                nhs_number: known.into(),
                flag_type: 1,
                start_date: "2025-01-10".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.LocalAuthority/ListFlags",
            pb::ListFlagsRequest::default().encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.LocalAuthority/ListNotifications",
            pb::ListNotificationsRequest::default().encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.LocalAuthority/WatchNotifications",
            pb::WatchNotificationsRequest::default().encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.LocalAuthority/AcknowledgeNotifications",
            pb::AcknowledgeNotificationsRequest { up_to_cursor: 1 }.encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Audit/ListAuditEvents",
            pb::ListAuditEventsRequest::default().encode_to_vec(),
        ),
        ("/cpis.gateway.v1.Audit/GetCheckpoint", Vec::new()),
        (
            "/cpis.gateway.v1.Audit/VerifyAuditLog",
            pb::VerifyAuditLogRequest::default().encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/UpsertOrganisation",
            pb::UpsertOrganisationRequest {
                ods_code: "Z98".into(),
                name: "A council".into(),
                kind: 1,
                onboarded: true,
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/ListOrganisations",
            pb::ListOrganisationsRequest::default().encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/RegisterSystem",
            pb::RegisterSystemRequest {
                san: "spiffe://c/x".into(),
                ods_code: LA.into(),
                activities: vec!["CPIS_LA_MANAGE".into()],
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/ListSystems",
            pb::ListSystemsRequest::default().encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/RemoveSystem",
            pb::RemoveSystemRequest {
                san: "spiffe://c/x".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/SetRestriction",
            pb::SetRestrictionRequest {
                nhs_number: known.into(),
                reason: "court order".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/ClearRestriction",
            pb::ClearRestrictionRequest {
                nhs_number: known.into(),
            }
            .encode_to_vec(),
        ),
        (
            "/cpis.gateway.v1.Administration/MarkNhsNumberInactive",
            pb::MarkNhsNumberInactiveRequest {
                nhs_number: known.into(),
                superseded_by: String::new(),
            }
            .encode_to_vec(),
        ),
    ]
}

/// A gRPC frame: uncompressed flag, big-endian length, the bytes.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What a raw HTTP/2 call got: the HTTP status and the gRPC status (from the headers of a
/// trailers-only answer, or from the trailers).
struct Raw {
    http: http::StatusCode,
    grpc: Option<Status>,
}

async fn raw(dev: &Dev, path: &str, content_type: &str, token: Option<&str>, body: Vec<u8>) -> Raw {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1{path}"))
        .header("content-type", content_type)
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            prost::bytes::Bytes::from(body),
        )))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let response = dev.channel.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let mut grpc = Status::from_header_map(&parts.headers);
        if grpc.is_none() {
            // Not trailers-only: read to the trailers (a stream that stays open is cut at 5 s).
            if let Ok(Ok(collected)) =
                tokio::time::timeout(Duration::from_secs(5), body.collect()).await
            {
                grpc = collected.trailers().and_then(Status::from_header_map);
            }
        }
        Raw {
            http: parts.status,
            grpc,
        }
    })
    .await;
    answer.unwrap_or_else(|_| panic!("{path}: no answer within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_cut_frames_on_every_rpc_are_invalid_argument_never_internal() {
    let (dev, t, known) = prepared().await;
    let before = written(&dev, &t, &known).await;
    let token = |path: &str| -> &str {
        if path.contains("ChildProtection") {
            &t.clinician
        } else if path.contains("LocalAuthority") {
            &t.la
        } else if path.contains("Audit") {
            &t.auditor
        } else {
            &t.admin
        }
    };
    // Field 1 with wire type 7 (there is no such type), then a length running past the end.
    let garbage: Vec<u8> = vec![0x0f, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x7f, 0x01];
    let mut wrong = Vec::new();
    for (path, valid) in every_rpc(&known) {
        let mut cut = frame(&valid);
        cut.truncate(cut.len().saturating_sub(1).max(3));
        let cases: [(&str, Vec<u8>); 3] = [
            ("garbage bytes", frame(&garbage)),
            ("a frame cut short", cut),
            ("bytes that are no frame", b"{\"nhs_number\": 1}".to_vec()),
        ];
        for (what, body) in cases {
            let answer = raw(&dev, path, "application/grpc", Some(token(path)), body).await;
            let code = answer.grpc.as_ref().map(|s| s.code());
            let message = answer.grpc.as_ref().map(|s| s.message().to_owned());
            if code != Some(Code::InvalidArgument) {
                wrong.push(format!(
                    "{path} with {what}: {:?} {code:?} {message:?}",
                    answer.http
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        written(&dev, &t, &known).await,
        before,
        "a damaged frame wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_content_type_on_every_rpc_is_refused_and_writes_nothing() {
    let (dev, t, known) = prepared().await;
    let before = written(&dev, &t, &known).await;
    let mut wrong = Vec::new();
    for (path, _) in every_rpc(&known) {
        let answer = raw(
            &dev,
            path,
            "application/json",
            Some(&t.admin),
            br#"{"nhs_number": "9434765919"}"#.to_vec(),
        )
        .await;
        // The gRPC over HTTP/2 protocol: an unsupported content type is HTTP 415.
        let ok = answer.http == http::StatusCode::UNSUPPORTED_MEDIA_TYPE
            || matches!(
                answer.grpc.as_ref().map(|s| s.code()),
                Some(Code::InvalidArgument)
            );
        if !ok {
            wrong.push(format!(
                "{path}: HTTP {} {:?}",
                answer.http,
                answer.grpc.map(|s| (s.code(), s.message().to_owned()))
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(written(&dev, &t, &known).await, before);
}

fn jwt(
    header: serde_json::Value,
    claims: serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn ed25519_signer(pkcs8: Vec<u8>) -> impl Fn(&[u8]) -> Vec<u8> {
    move |input| {
        let key = jsonwebtoken::EncodingKey::from_ed_der(&pkcs8);
        let token_sig =
            jsonwebtoken::crypto::sign(input, &key, jsonwebtoken::Algorithm::EdDSA).unwrap();
        URL_SAFE_NO_PAD.decode(token_sig).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_unsigned_and_misaddressed_tokens_are_unauthenticated_on_every_rpc() {
    let (dev, t, known) = prepared().await;
    let keys = cpis_cli::devkeys::load(dev.dir.path()).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = cpis_cli::devkeys::ensure(other_dir.path()).unwrap();
    let now = chrono_now();
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": keys.key_id});
    let claims = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut c = serde_json::json!({
            "iss": cpis_cli::devkeys::ISSUER, "aud": cpis_cli::devkeys::AUDIENCE,
            "sub": "mallory", "nhsid_useruid": "mallory", "name": "Mallory",
            "nhsid_nrbac_roles": [{"person_roleid": "1", "org_code": ADMIN_ORG, "role_code": "R0001",
                "activity_codes": ["CPIS_ADMIN", "CPIS_AUDIT", "CPIS_LA_MANAGE", "B0107", "B0170"]}],
            "selected_roleid": "1", "authentication_assurance_level": "3",
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        change(&mut c);
        c
    };
    let real = ed25519_signer(keys.pkcs8.clone());
    let forged = ed25519_signer(other.pkcs8.clone());
    // The control: the same construction with the real key and good claims is accepted.
    let good = jwt(header.clone(), claims(&|_| {}), &real);
    let answer = raw(
        &dev,
        "/cpis.gateway.v1.Administration/ListOrganisations",
        "application/grpc",
        Some(&good),
        frame(&[]),
    )
    .await;
    assert_eq!(answer.grpc.map(|s| s.code()), Some(Code::Ok));
    let before = written(&dev, &t, &known).await;

    let tokens = [
        ("no token", None),
        ("not a JWT", Some("a.b".to_owned())),
        (
            "expired an hour ago",
            Some(jwt(
                header.clone(),
                claims(&|c| {
                    c["exp"] = (now - 3600).into();
                    c["nbf"] = (now - 7200).into();
                    c["iat"] = (now - 7200).into();
                }),
                &real,
            )),
        ),
        (
            "signed by another key under the real kid",
            Some(jwt(header.clone(), claims(&|_| {}), &forged)),
        ),
        (
            "alg none",
            Some(jwt(
                serde_json::json!({"alg": "none", "typ": "JWT", "kid": keys.key_id}),
                claims(&|_| {}),
                |_| Vec::new(),
            )),
        ),
        (
            "alg HS256 keyed with the public JWKS",
            Some(jwt(
                serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": keys.key_id}),
                claims(&|_| {}),
                |_| vec![7; 32],
            )),
        ),
        (
            "for another audience",
            Some(jwt(
                header.clone(),
                claims(&|c| c["aud"] = "another-service".into()),
                &real,
            )),
        ),
        (
            "from another issuer",
            Some(jwt(
                header.clone(),
                claims(&|c| c["iss"] = "someone-else".into()),
                &real,
            )),
        ),
        (
            "without a subject",
            Some(jwt(
                header.clone(),
                claims(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
                &real,
            )),
        ),
    ];
    let mut wrong = Vec::new();
    for (path, valid) in every_rpc(&known) {
        for (what, token) in &tokens {
            let answer = raw(
                &dev,
                path,
                "application/grpc",
                token.as_deref(),
                frame(&valid),
            )
            .await;
            let code = answer.grpc.as_ref().map(|s| s.code());
            if code != Some(Code::Unauthenticated) {
                wrong.push(format!("{path} with a token {what}: {code:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        written(&dev, &t, &known).await,
        before,
        "an unauthenticated call wrote something"
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
