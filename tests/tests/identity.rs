//! NHS identity as it really arrives: CIS2-shaped tokens against the real processes (on
//! PostgreSQL when configured). The caller is the selected role profile alone, a token whose
//! role claims name no caller is refused with its reason, and lookups need the minimum
//! authentication assurance level, a refusal being a decision that is audited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::system::{Options, System};
use cpis_cli::token::{Identity, RoleProfile};
use cpis_proto::gateway as pb;
use pb::child_protection_client::ChildProtectionClient;
use std::time::Duration;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

const ADMIN_ORG: &str = "X26";
const TRUST: &str = "RQX";
const OTHER_TRUST: &str = "RQY";
const SITE: &str = "RQX01";

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(10))
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

async fn started() -> System {
    let sys = System::start(Options::default()).await;
    sys.onboard(&[
        (TRUST, pb::OrganisationKind::Health),
        (OTHER_TRUST, pb::OrganisationKind::Health),
    ])
    .await
    .unwrap();
    sys
}

fn profile(org: &str, role: &str, activities: &[&str]) -> RoleProfile {
    RoleProfile {
        org: org.into(),
        role: role.into(),
        activities: activities.iter().map(|a| a.to_string()).collect(),
    }
}

fn identity(user: &str, selected: RoleProfile, others: Vec<RoleProfile>, aal: u8) -> Identity {
    Identity {
        user: user.into(),
        name: format!("Dr {user}"),
        selected,
        others,
        assurance_level: aal,
    }
}

async fn lookup(sys: &System, token: &str, site: &str) -> Result<pb::LookupChildResponse, Status> {
    let request = pb::LookupChildRequest {
        nhs_number: "9434765919".into(),
        access_kind: pb::AccessKind::Unscheduled.into(),
        setting: Some(pb::Setting {
            ods_code: site.into(),
            setting_type: pb::SettingType::EmergencyDepartment.into(),
        }),
        request_id: String::new(),
    };
    ChildProtectionClient::new(sys.channel())
        .lookup_child(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

/// The audit records of user `user`, as (action, outcome, reason, role code, user name).
async fn audited(sys: &System, user: &str) -> Vec<(String, i32, String, String, String)> {
    let auditor = sys.token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    let request = pb::ListAuditEventsRequest {
        user_id: user.into(),
        page_size: 100,
        ..Default::default()
    };
    pb::audit_client::AuditClient::new(sys.channel())
        .list_audit_events(with_token(request, &auditor))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| (e.action, e.outcome, e.reason, e.role_code, e.user_name))
        .collect()
}

/// Whether the whole audit chain verifies.
async fn chain_verifies(sys: &System) -> bool {
    let auditor = sys.token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    pb::audit_client::AuditClient::new(sys.channel())
        .verify_audit_log(with_token(
            pb::VerifyAuditLogRequest { checkpoint: None },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner()
        .ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_from_a_role_profile_not_selected_grant_nothing() {
    let sys = started().await;
    // Selected: a receptionist profile at RQX without B0107. Not selected: a clinician
    // profile at RQY holding it.
    let token = sys.token_as(&identity(
        "555000000101",
        profile(TRUST, "S8000:G8000:R8002", &[]),
        vec![profile(OTHER_TRUST, "S8000:G8000:R8000", &["B0107"])],
        3,
    ));
    let refused = lookup(&sys, &token, SITE).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(reason(&refused), "MISSING_ACTIVITY");
    // Nor at the other profile's own site.
    let refused = lookup(&sys, &token, "RQY01").await.unwrap_err();
    assert_eq!(reason(&refused), "MISSING_ACTIVITY");

    // The same user with the clinician profile selected looks up at RQY only.
    let token = sys.token_as(&identity(
        "555000000101",
        profile(OTHER_TRUST, "S8000:G8000:R8000", &["B0107"]),
        vec![profile(TRUST, "S8000:G8000:R8002", &[])],
        3,
    ));
    lookup(&sys, &token, "RQY01").await.unwrap();
    let refused = lookup(&sys, &token, SITE).await.unwrap_err();
    assert_eq!(reason(&refused), "SETTING_NOT_IN_ORGANISATION");

    // Every decision recorded the job role of the profile it was made for (the R… of S…:G…:R…).
    let records = audited(&sys, "555000000101").await;
    let roles: Vec<&str> = records.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(roles, ["R8002", "R8002", "R8000", "R8000"], "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_selected_role_is_missing_or_not_held_is_refused_with_its_reason() {
    let sys = started().await;
    let keys = cpis_cli::devkeys::load(&sys.data_dir()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: serde_json::Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(keys.key_id.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&keys.pkcs8),
        )
        .unwrap()
    };
    let claims = |selected: Option<&str>| {
        let mut c = serde_json::json!({
            "iss": cpis_cli::devkeys::ISSUER, "aud": cpis_cli::devkeys::AUDIENCE,
            "sub": "555000000102", "nhsid_useruid": "555000000102", "name": "Dr Two",
            "nhsid_nrbac_roles": [{"person_roleid": "555000000301", "org_code": TRUST,
                "role_code": "S8000:G8000:R8000", "activity_codes": ["B0107"]}],
            "authentication_assurance_level": "3",
            "iat": now, "nbf": now, "exp": now + 600,
        });
        if let Some(s) = selected {
            c["selected_roleid"] = s.into();
        }
        c
    };
    // The control: the same token with its role selected looks up.
    lookup(&sys, &sign(claims(Some("555000000301"))), SITE)
        .await
        .unwrap();
    for (selected, want) in [
        (None, "NO_SELECTED_ROLE"),
        (Some("555000000399"), "SELECTED_ROLE_NOT_FOUND"),
    ] {
        let refused = lookup(&sys, &sign(claims(selected)), SITE)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert_eq!(reason(&refused), want);
    }
    // Refused before any decision: only the control was audited.
    assert_eq!(audited(&sys, "555000000102").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_signed_in_at_aal_2_is_insufficient_assurance_and_audited() {
    let sys = started().await;
    let clinician = |aal| {
        sys.token_as(&identity(
            "555000000103",
            profile(TRUST, "S8000:G8000:R8000", &["B0107"]),
            Vec::new(),
            aal,
        ))
    };
    let refused = lookup(&sys, &clinician(2), SITE).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(reason(&refused), "INSUFFICIENT_ASSURANCE");
    // At the minimum (3, smartcard-class) the same clinician looks up.
    lookup(&sys, &clinician(3), SITE).await.unwrap();
    let records = audited(&sys, "555000000103").await;
    let outcomes: Vec<(i32, &str)> = records.iter().map(|r| (r.1, r.2.as_str())).collect();
    assert_eq!(
        outcomes,
        [
            (pb::AuditOutcome::Denied as i32, "INSUFFICIENT_ASSURANCE"),
            (pb::AuditOutcome::Allowed as i32, ""),
        ],
        "{records:?}"
    );
    // Who looked is recorded by name too (CIS2's `name`), inside the hash chain.
    assert!(
        records.iter().all(|r| r.4 == "Dr 555000000103"),
        "{records:?}"
    );
    assert!(chain_verifies(&sys).await);
}
