//! The conformance table (`rules/conformance.csv`) holds for the pure rules, and end to end
//! through Decide on SQLite and PostgreSQL, with exactly one audit record per decision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use access_service::rules::{
    self, AccessDecision, Action, Caller, CallerKind, Context, OrganisationKind,
    OrganisationStanding,
};
use access_service::storage::systems;
use common::conformance as table;
use cpis_proto::access::Principal;
use cpis_proto::gateway::{
    ListAuditEventsRequest, RegisterSystemRequest, UpsertOrganisationRequest, VerifyAuditLogRequest,
};
use platform::domain::{Activity, DenyReason, OdsCode};
use platform::requests::SystemRegistration;
use std::collections::HashSet;

#[test]
fn conformance_table_covers_every_action_and_every_reason() {
    let rows = table::rows();
    let actions: HashSet<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    for a in Action::ALL {
        assert!(actions.contains(a.name()), "no row for {}", a.name());
    }
    let reasons: HashSet<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    for r in DenyReason::ALL {
        assert!(reasons.contains(r.as_str()), "no row for {}", r.as_str());
    }
    assert!(rows.iter().any(|r| r.principal == "system"));
    assert!(rows.iter().any(|r| Action::parse(&r.action).is_none()));
}

/// A table row's principal: `user` signed in at the default minimum assurance level (3),
/// `user-aal2` below it; systems have none.
fn assurance_of(principal: &str) -> u8 {
    match principal {
        "user" => 3,
        "user-aal2" => 2,
        _ => 0,
    }
}

#[test]
fn conformance_table_holds_for_the_pure_rules() {
    for row in table::rows() {
        let caller = Caller {
            kind: if row.principal.starts_with("user") {
                CallerKind::User
            } else {
                CallerKind::System
            },
            ods_code: OdsCode::parse(&row.organisation).unwrap(),
            activities: if row.principal == "unregistered-system" {
                Default::default()
            } else {
                row.activities
                    .iter()
                    .filter_map(|a| Activity::from_code(a))
                    .collect()
            },
            assurance_level: assurance_of(&row.principal),
        };
        let standing = row
            .organisation_kind
            .as_ref()
            .map(|k| OrganisationStanding {
                kind: OrganisationKind::parse(k).unwrap(),
                onboarded: row.onboarded,
            });
        let context = Context {
            access_kind: row.access_kind,
            site_ods_code: (!row.setting.is_empty()).then(|| OdsCode::parse(&row.setting).unwrap()),
            min_assurance_level: access_service::decide::DEFAULT_MIN_ASSURANCE_LEVEL,
        };
        let got = rules::decide(&caller, Action::parse(&row.action), standing, &context);
        let want = if row.allowed {
            AccessDecision::Allow {
                notifies: row.obligation,
            }
        } else {
            AccessDecision::Deny(DenyReason::parse(&row.reason).unwrap())
        };
        assert_eq!(got, want, "line {}: {}", row.line, row.comment);
    }
}

#[tokio::test]
async fn conformance_table_holds_through_decide_on_every_database() {
    for db in platform::testing::all("conformance").await {
        let mut server = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        let client = &mut server.client;
        let mut decided = 0u64;
        for row in table::rows() {
            if let Some(kind) = &row.organisation_kind {
                let kind = OrganisationKind::parse(kind).unwrap();
                client
                    .upsert_organisation(common::on_behalf(
                        &common::admin(),
                        UpsertOrganisationRequest {
                            ods_code: row.organisation.clone(),
                            name: format!("Organisation {}", row.organisation),
                            kind: i32::from(kind),
                            onboarded: row.onboarded,
                        },
                    ))
                    .await
                    .unwrap();
            }
            let principal = match row.principal.as_str() {
                "user" | "user-aal2" => Principal {
                    assurance_level: assurance_of(&row.principal).into(),
                    ..common::user(
                        &format!("user{}", row.line),
                        &row.organisation,
                        &row.activities
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                    )
                },
                kind => {
                    let san = format!("spiffe://conformance/{kind}/{}", row.line);
                    if kind == "system" && row.activities.is_empty() {
                        // RegisterSystem refuses a system without activities; one whose
                        // stored activities grant nothing is written as storage holds it.
                        systems::register(
                            &conn,
                            &SystemRegistration {
                                san: san.clone(),
                                ods_code: OdsCode::parse(&row.organisation).unwrap(),
                                activities: Default::default(),
                            },
                        )
                        .await
                        .unwrap();
                    } else if kind == "system" {
                        client
                            .register_system(common::on_behalf(
                                &common::admin(),
                                RegisterSystemRequest {
                                    san: san.clone(),
                                    ods_code: row.organisation.clone(),
                                    activities: row.activities.clone(),
                                },
                            ))
                            .await
                            .unwrap();
                    }
                    // What a request claims for a system is never believed.
                    Principal {
                        system_san: san,
                        ods_code: row.organisation.clone(),
                        activities: Activity::ALL.iter().map(|a| a.code().to_owned()).collect(),
                        ..Default::default()
                    }
                }
            };
            let request = match row.access_kind {
                Some(kind) => common::lookup(principal, kind, &row.setting),
                None => common::action(principal, &row.action),
            };
            let answer = client.decide(request).await;
            if Action::parse(&row.action).is_none() {
                let status = answer.unwrap_err();
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "line {}",
                    row.line
                );
                continue;
            }
            let d = answer.unwrap().into_inner();
            decided += 1;
            let label = format!("{} line {}: {}", db.label(), row.line, row.comment);
            assert_eq!(d.allowed, row.allowed, "{label}");
            assert_eq!(d.reason, row.reason, "{label}");
            assert_eq!(d.obligation.is_some(), row.obligation, "{label}");
            assert_eq!(
                d.audit_sequence, decided,
                "one audit record per decision: {label}"
            );
            let lookup = row.allowed && row.action == "LookupChild";
            assert_eq!(!d.lookup_id.is_empty(), lookup, "{label}");
        }
        let events = client
            .list_audit_events(common::on_behalf(
                &common::admin(),
                ListAuditEventsRequest {
                    page_size: 1000,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(events.len() as u64, decided, "{}", db.label());
        let verified = client
            .verify_audit_log(common::on_behalf(
                &common::admin(),
                VerifyAuditLogRequest::default(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(verified.ok, "{}: {}", db.label(), verified.problem);
        assert_eq!(verified.records_checked, decided);
    }
}
