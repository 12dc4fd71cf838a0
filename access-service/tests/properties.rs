//! The rules against a second, deliberately simple reference implementation (a table
//! lookup), and the invariants: no activities never allows anything; adding an activity never
//! removes an access; every decision, allowed or denied, writes exactly one audit record (this
//! one through the real writer, on SQLite and PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use access_service::decide::AccessDecisions;
use access_service::rules::{
    self, AccessDecision, Action, Caller, CallerKind, Context, OrganisationKind,
    OrganisationStanding,
};
use access_service::storage::systems;
use cpis_proto::access::{DecideRequest, Principal};
use cpis_proto::gateway::Setting;
use platform::domain::{AccessKind, Activity, DenyReason, OdsCode, SettingType};
use platform::requests::SystemRegistration;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeSet;

/// API.md "Who may call what" as a plain table: (action, access kind, activity, kind).
const TABLE: &[(&str, &str, &str, &str)] = &[
    ("LookupChild", "UNSCHEDULED", "B0107", "HEALTH"),
    ("LookupChild", "SCHEDULED", "B0170", "HEALTH"),
    ("UploadFlags", "", "CPIS_LA_MANAGE", "LOCAL_AUTHORITY"),
    ("EndFlag", "", "CPIS_LA_MANAGE", "LOCAL_AUTHORITY"),
    ("DeleteFlag", "", "CPIS_LA_MANAGE", "LOCAL_AUTHORITY"),
    ("ListFlags", "", "CPIS_LA_MANAGE", "LOCAL_AUTHORITY"),
    ("ListNotifications", "", "CPIS_LA_MANAGE", "LOCAL_AUTHORITY"),
    (
        "WatchNotifications",
        "",
        "CPIS_LA_MANAGE",
        "LOCAL_AUTHORITY",
    ),
    (
        "AcknowledgeNotifications",
        "",
        "CPIS_LA_MANAGE",
        "LOCAL_AUTHORITY",
    ),
    ("ListAuditEvents", "", "CPIS_AUDIT", ""),
    ("GetCheckpoint", "", "CPIS_AUDIT", ""),
    ("VerifyAuditLog", "", "CPIS_AUDIT", ""),
    ("UpsertOrganisation", "", "CPIS_ADMIN", ""),
    ("ListOrganisations", "", "CPIS_ADMIN", ""),
    ("RegisterSystem", "", "CPIS_ADMIN", ""),
    ("ListSystems", "", "CPIS_ADMIN", ""),
    ("RemoveSystem", "", "CPIS_ADMIN", ""),
    ("SetRestriction", "", "CPIS_ADMIN", ""),
    ("ClearRestriction", "", "CPIS_ADMIN", ""),
    ("MarkNhsNumberInactive", "", "CPIS_ADMIN", ""),
    ("ListFailedObligations", "", "CPIS_ADMIN", ""),
    ("RetryObligation", "", "CPIS_ADMIN", ""),
];

#[derive(Clone, Debug)]
struct Case {
    system: bool,
    activities: Vec<&'static str>,
    ods: &'static str,
    /// (kind, onboarded); `None`: not registered.
    organisation: Option<(&'static str, bool)>,
    action: &'static str,
    access_kind: &'static str,
    site: &'static str,
    /// The user's authentication assurance level (lookups need 3).
    assurance: u8,
}

/// The reference: written as lookups and string comparisons, sharing no code with `rules`.
fn reference(c: &Case) -> (bool, &'static str, bool) {
    let row = TABLE.iter().find(|(action, kind, _, _)| {
        *action == c.action && (kind.is_empty() || *kind == c.access_kind)
    });
    let Some((action, _, activity, org_kind)) = row else {
        return (false, "MISSING_ACTIVITY", false);
    };
    let held = c.activities.contains(activity) && (!c.system || *activity == "CPIS_LA_MANAGE");
    if !held {
        return (false, "MISSING_ACTIVITY", false);
    }
    if *action == "LookupChild" && c.assurance < 3 {
        return (false, "INSUFFICIENT_ASSURANCE", false);
    }
    if !org_kind.is_empty() && c.organisation != Some((org_kind, true)) {
        return (false, "ORGANISATION_NOT_ONBOARDED", false);
    }
    if *action == "LookupChild" && !c.site.starts_with(c.ods) {
        return (false, "SETTING_NOT_IN_ORGANISATION", false);
    }
    (
        true,
        "",
        *action == "LookupChild" && c.access_kind == "UNSCHEDULED",
    )
}

fn decide_pure(c: &Case) -> (bool, &'static str, bool) {
    let caller = Caller {
        kind: if c.system {
            CallerKind::System
        } else {
            CallerKind::User
        },
        ods_code: OdsCode::parse(c.ods).unwrap(),
        activities: c
            .activities
            .iter()
            .filter_map(|a| Activity::from_code(a))
            .collect(),
        assurance_level: if c.system { 0 } else { c.assurance },
    };
    let standing = c.organisation.map(|(k, onboarded)| OrganisationStanding {
        kind: OrganisationKind::parse(k).unwrap(),
        onboarded,
    });
    let context = Context {
        access_kind: AccessKind::parse(c.access_kind),
        site_ods_code: (!c.site.is_empty()).then(|| OdsCode::parse(c.site).unwrap()),
        min_assurance_level: 3,
    };
    match rules::decide(&caller, Action::parse(c.action), standing, &context) {
        AccessDecision::Allow { notifies } => (true, "", notifies),
        AccessDecision::Deny(r) => (false, r.as_str(), false),
    }
}

const ACTIVITIES: &[&str] = &[
    "B0107",
    "B0170",
    "CPIS_LA_MANAGE",
    "CPIS_AUDIT",
    "CPIS_ADMIN",
];

fn activities() -> impl Strategy<Value = Vec<&'static str>> {
    (0u8..32).prop_map(|mask| {
        ACTIVITIES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, a)| *a)
            .collect()
    })
}

fn case(known_actions_only: bool) -> impl Strategy<Value = Case> {
    let mut actions: Vec<&'static str> = Action::ALL.iter().map(|a| a.name()).collect();
    actions.push("LookupChild");
    if !known_actions_only {
        actions.extend(["", "lookupchild", "Decide"]);
    }
    (
        any::<bool>(),
        activities(),
        prop::sample::select(vec!["RQX", "RQY", "706", "RQX01"]),
        prop::option::of((
            prop::sample::select(vec!["HEALTH", "LOCAL_AUTHORITY"]),
            any::<bool>(),
        )),
        prop::sample::select(actions),
        prop::sample::select(vec!["UNSCHEDULED", "SCHEDULED"]),
        prop::sample::select(vec!["RQX", "RQX01", "RQXA9", "RQY01", "70601", "706"]),
        prop::sample::select(vec![0u8, 1, 2, 3, 3, 3, 4]),
    )
        .prop_map(
            |(system, activities, ods, organisation, action, access_kind, site, assurance)| {
                let lookup = action == "LookupChild";
                Case {
                    system,
                    activities,
                    ods,
                    organisation,
                    action,
                    access_kind: if lookup { access_kind } else { "" },
                    site: if lookup { site } else { "" },
                    assurance,
                }
            },
        )
}

proptest! {
    #![proptest_config(Config::with_cases(4000))]

    #[test]
    fn decide_agrees_with_the_reference_table(c in case(false)) {
        prop_assert_eq!(decide_pure(&c), reference(&c));
    }

    #[test]
    fn a_principal_with_no_activities_is_never_allowed(mut c in case(false)) {
        c.activities.clear();
        prop_assert_eq!(decide_pure(&c).0, false);
    }

    #[test]
    fn adding_an_activity_never_removes_an_access(c in case(false), extra in prop::sample::select(ACTIVITIES.to_vec())) {
        let before = decide_pure(&c).0;
        let mut more = c.clone();
        if !more.activities.contains(&extra) {
            more.activities.push(extra);
        }
        prop_assert!(!before || decide_pure(&more).0);
    }
}

fn request_for(c: &Case, san: &str) -> DecideRequest {
    let principal = if c.system {
        Principal {
            system_san: san.into(),
            ods_code: c.ods.into(),
            activities: ACTIVITIES.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    } else {
        Principal {
            assurance_level: c.assurance.into(),
            ..common::user("someone", c.ods, &c.activities)
        }
    };
    let lookup = c.action == "LookupChild";
    let access_kind = AccessKind::parse(c.access_kind);
    DecideRequest {
        principal: Some(principal),
        action: c.action.into(),
        nhs_number: if lookup {
            "9434765919".into()
        } else {
            String::new()
        },
        access_kind: access_kind.map(i32::from).unwrap_or_default(),
        setting: access_kind.map(|k| Setting {
            ods_code: c.site.into(),
            setting_type: match k {
                AccessKind::Unscheduled => SettingType::Maternity.into(),
                AccessKind::Scheduled => SettingType::Camhs.into(),
            },
        }),
        ..Default::default()
    }
}

#[test]
fn every_decision_writes_exactly_one_audit_record_and_agrees_with_the_reference() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for db in rt.block_on(platform::testing::all("one_record")) {
        let conn = rt.block_on(common::migrated(&db.url));
        let decisions = {
            let _guard = rt.enter();
            AccessDecisions::spawn(conn.clone())
        };
        let mut runner = TestRunner::new(Config::with_cases(48));
        let case_number = std::sync::atomic::AtomicU32::new(0);
        runner
            .run(&case(true), |c| {
                let n = case_number.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let san = format!("spiffe://property/{n}");
                let got = rt.block_on(async {
                    if let Some((kind, onboarded)) = c.organisation {
                        common::organisation(&conn, c.ods, kind, onboarded).await;
                    }
                    if c.system {
                        // Written as storage holds it: RegisterSystem refuses a system without
                        // activities, yet one holding none must still be denied everything.
                        let registered: BTreeSet<Activity> = c
                            .activities
                            .iter()
                            .filter(|a| **a == "CPIS_LA_MANAGE")
                            .filter_map(|a| Activity::from_code(a))
                            .collect();
                        systems::register(
                            &conn,
                            &SystemRegistration {
                                san: san.clone(),
                                ods_code: OdsCode::parse(c.ods).unwrap(),
                                activities: registered,
                            },
                        )
                        .await
                        .unwrap();
                    }
                    let before = common::head(&conn).await;
                    let d = decisions.decide(request_for(&c, &san)).await.unwrap();
                    let after = common::head(&conn).await;
                    (d, before, after)
                });
                let (d, before, after) = got;
                prop_assert_eq!(after, before + 1, "{}", db.label());
                prop_assert_eq!(d.audit_sequence, after);
                // The registry now holds whatever this case set; an unregistered case is
                // judged against what earlier cases left, as the service sees it.
                let mut expected_case = c.clone();
                if c.organisation.is_none() {
                    expected_case.organisation = rt.block_on(stored_standing(&conn, c.ods));
                }
                let want = reference(&expected_case);
                prop_assert_eq!((d.allowed, d.reason.as_str(), d.obligation.is_some()), want);
                Ok(())
            })
            .unwrap();
    }
}

async fn stored_standing(
    conn: &sea_orm::DatabaseConnection,
    ods: &str,
) -> Option<(&'static str, bool)> {
    use sea_orm::EntityTrait;
    let row = access_service::entities::organisation::Entity::find_by_id(ods.to_owned())
        .one(conn)
        .await
        .unwrap()?;
    let kind = if row.kind == "HEALTH" {
        "HEALTH"
    } else {
        "LOCAL_AUTHORITY"
    };
    Some((kind, row.onboarded))
}

#[test]
fn the_reference_table_names_every_action() {
    let named: BTreeSet<&str> = TABLE.iter().map(|r| r.0).collect();
    for a in Action::ALL {
        assert!(named.contains(a.name()));
    }
    assert_eq!(DenyReason::ALL.len(), 4);
}
