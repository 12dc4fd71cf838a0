//! Organisations, systems and the audit listing through gRPC: validation, pagination, the
//! forwarded principal, and ResolveSystem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cpis_proto::access::ResolveSystemRequest;
use cpis_proto::gateway::{
    ListAuditEventsRequest, ListOrganisationsRequest, ListSystemsRequest, RegisterSystemRequest,
    RemoveSystemRequest, UpsertOrganisationRequest,
};
use platform::domain::AccessKind;

fn fields(status: &tonic::Status) -> String {
    String::from_utf8_lossy(status.details()).into_owned()
}

#[tokio::test]
async fn organisations_are_upserted_validated_and_listed_in_pages() {
    for db in platform::testing::all("organisations").await {
        let mut s = common::start(&db.url).await;
        let admin = common::admin();
        for (i, ods) in ["rqx", "706", "A81001", "X26", "RQY"].iter().enumerate() {
            let o = s
                .client
                .upsert_organisation(common::on_behalf(
                    &admin,
                    UpsertOrganisationRequest {
                        ods_code: ods.to_string(),
                        name: format!("Org {i}"),
                        kind: if i == 1 { 1 } else { 2 },
                        onboarded: i % 2 == 0,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(o.ods_code, ods.to_ascii_uppercase());
        }
        // Upserting again replaces, keeping the creation time.
        let first = s
            .client
            .upsert_organisation(common::on_behalf(
                &admin,
                UpsertOrganisationRequest {
                    ods_code: "RQX".into(),
                    name: "Renamed Trust".into(),
                    kind: 2,
                    onboarded: false,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.name, "Renamed Trust");
        assert!(!first.onboarded);

        let bad = s
            .client
            .upsert_organisation(common::on_behalf(
                &admin,
                UpsertOrganisationRequest {
                    ods_code: "R-1".into(),
                    name: String::new(),
                    kind: 0,
                    onboarded: true,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        for f in ["ods_code", "name", "kind"] {
            assert!(fields(&bad).contains(f), "{f}");
        }

        let mut codes = Vec::new();
        let mut token = String::new();
        loop {
            let page = s
                .client
                .list_organisations(common::on_behalf(
                    &admin,
                    ListOrganisationsRequest {
                        page_size: 2,
                        page_token: token.clone(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(page.organisations.len() <= 2);
            codes.extend(page.organisations.into_iter().map(|o| o.ods_code));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            codes,
            ["706", "A81001", "RQX", "RQY", "X26"],
            "{}",
            db.label()
        );

        let garbage = s
            .client
            .list_organisations(common::on_behalf(
                &admin,
                ListOrganisationsRequest {
                    page_size: -1,
                    page_token: "not-a-token".into(),
                },
            ))
            .await
            .unwrap_err();
        assert!(fields(&garbage).contains("page_size") && fields(&garbage).contains("page_token"));
    }
}

#[tokio::test]
async fn systems_hold_only_la_manage_and_resolve_to_their_organisation() {
    for db in platform::testing::all("systems").await {
        let mut s = common::start(&db.url).await;
        let admin = common::admin();
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "706", "LOCAL_AUTHORITY", true).await;
        let san = "spiffe://council.example/case-management";
        let refused = s
            .client
            .register_system(common::on_behalf(
                &admin,
                RegisterSystemRequest {
                    san: san.into(),
                    ods_code: "706".into(),
                    activities: vec!["B0107".into()],
                },
            ))
            .await
            .unwrap_err();
        assert!(fields(&refused).contains("activities"));
        let registered = s
            .client
            .register_system(common::on_behalf(
                &admin,
                RegisterSystemRequest {
                    san: san.into(),
                    ods_code: "706".into(),
                    activities: vec!["CPIS_LA_MANAGE".into(), "CPIS_LA_MANAGE".into()],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(registered.activities, ["CPIS_LA_MANAGE"]);
        let identity = s
            .client
            .resolve_system(ResolveSystemRequest { san: san.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(identity.ods_code, "706");
        assert_eq!(identity.organisation_name, "Organisation 706");
        let listed = s
            .client
            .list_systems(common::on_behalf(&admin, ListSystemsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.systems.len(), 1, "{}", db.label());
        s.client
            .remove_system(common::on_behalf(
                &admin,
                RemoveSystemRequest { san: san.into() },
            ))
            .await
            .unwrap();
        let again = s
            .client
            .remove_system(common::on_behalf(
                &admin,
                RemoveSystemRequest { san: san.into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::NotFound);
        let gone = s
            .client
            .resolve_system(ResolveSystemRequest { san: san.into() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn administration_needs_a_forwarded_principal_holding_the_activity() {
    let db = platform::testing::sqlite();
    let mut s = common::start(&db.url).await;
    let none = s
        .client
        .list_organisations(ListOrganisationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    let auditor = common::user("po", "RQX", &["CPIS_AUDIT"]);
    let denied = s
        .client
        .list_organisations(common::on_behalf(
            &auditor,
            ListOrganisationsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn audit_events_are_filtered_and_paged_oldest_first() {
    for db in platform::testing::all("list_audit").await {
        let mut s = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "RQX", "HEALTH", true).await;
        for i in 0..7 {
            let who = if i % 2 == 0 { "dr.a" } else { "dr.b" };
            s.client
                .decide(common::lookup(
                    common::user(who, "RQX", &["B0107"]),
                    AccessKind::Unscheduled,
                    "RQX01",
                ))
                .await
                .unwrap();
        }
        let auditor = common::user("po", "RQX", &["CPIS_AUDIT"]);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = s
                .client
                .list_audit_events(common::on_behalf(
                    &auditor,
                    ListAuditEventsRequest {
                        user_id: "dr.a".into(),
                        nhs_number: "943 476 5919".into(),
                        page_size: 3,
                        page_token: token.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            seen.extend(page.events.iter().map(|e| e.sequence));
            assert!(page.events.iter().all(|e| e.user_id == "dr.a"
                && e.outcome == 1
                && e.access_kind == 1
                && e.site_ods_code == "RQX01"
                && !e.lookup_id.is_empty()
                && e.hash.len() == 32));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, [1, 3, 5, 7], "{}", db.label());

        // A token is bound to its filters.
        let first = s
            .client
            .list_audit_events(common::on_behalf(
                &auditor,
                ListAuditEventsRequest {
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let changed = s
            .client
            .list_audit_events(common::on_behalf(
                &auditor,
                ListAuditEventsRequest {
                    page_size: 1,
                    user_id: "dr.b".into(),
                    page_token: first.next_page_token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert!(fields(&changed).contains("page_token"));
    }
}
