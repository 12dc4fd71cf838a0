//! The access rules of API.md "Who may call what", as one pure function: no I/O, no clock.
//!
//! The caller's activities, its organisation's registry entry and the call's context go in; an
//! [`AccessDecision`] comes out. Checks run in API.md's order and the first failure answers:
//! the activity the action needs, then (for lookups) the user's authentication assurance level,
//! then the organisation onboarded and of the right kind, then (for lookups) the setting inside
//! the caller's organisation. Anything not named here is
//! denied. `rules/conformance.csv` states the same rules as a table reviewers can read.

pub use cpis_domain::OrganisationKind;
use cpis_domain::{AccessKind, Activity, DenyReason, OdsCode};
use std::collections::BTreeSet;

/// The public RPCs access-service decides on, by their `cpis.gateway.v1` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    LookupChild,
    UploadFlags,
    EndFlag,
    DeleteFlag,
    ListFlags,
    ListNotifications,
    WatchNotifications,
    AcknowledgeNotifications,
    ListAuditEvents,
    GetCheckpoint,
    VerifyAuditLog,
    UpsertOrganisation,
    ListOrganisations,
    RegisterSystem,
    ListSystems,
    RemoveSystem,
    SetRestriction,
    ClearRestriction,
    MarkNhsNumberInactive,
    ListFailedObligations,
    RetryObligation,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::LookupChild,
        Action::UploadFlags,
        Action::EndFlag,
        Action::DeleteFlag,
        Action::ListFlags,
        Action::ListNotifications,
        Action::WatchNotifications,
        Action::AcknowledgeNotifications,
        Action::ListAuditEvents,
        Action::GetCheckpoint,
        Action::VerifyAuditLog,
        Action::UpsertOrganisation,
        Action::ListOrganisations,
        Action::RegisterSystem,
        Action::ListSystems,
        Action::RemoveSystem,
        Action::SetRestriction,
        Action::ClearRestriction,
        Action::MarkNhsNumberInactive,
        Action::ListFailedObligations,
        Action::RetryObligation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::LookupChild => "LookupChild",
            Action::UploadFlags => "UploadFlags",
            Action::EndFlag => "EndFlag",
            Action::DeleteFlag => "DeleteFlag",
            Action::ListFlags => "ListFlags",
            Action::ListNotifications => "ListNotifications",
            Action::WatchNotifications => "WatchNotifications",
            Action::AcknowledgeNotifications => "AcknowledgeNotifications",
            Action::ListAuditEvents => "ListAuditEvents",
            Action::GetCheckpoint => "GetCheckpoint",
            Action::VerifyAuditLog => "VerifyAuditLog",
            Action::UpsertOrganisation => "UpsertOrganisation",
            Action::ListOrganisations => "ListOrganisations",
            Action::RegisterSystem => "RegisterSystem",
            Action::ListSystems => "ListSystems",
            Action::RemoveSystem => "RemoveSystem",
            Action::SetRestriction => "SetRestriction",
            Action::ClearRestriction => "ClearRestriction",
            Action::MarkNhsNumberInactive => "MarkNhsNumberInactive",
            Action::ListFailedObligations => "ListFailedObligations",
            Action::RetryObligation => "RetryObligation",
        }
    }

    /// Exact names only: `lookupchild` is no action.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == name)
    }
}

/// What the registry says about the caller's organisation; `None` where it is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrganisationStanding {
    pub kind: OrganisationKind,
    pub onboarded: bool,
}

/// A person present (bearer token) or an unattended system (client certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerKind {
    User,
    System,
}

/// The caller as the rules see it. For a system, `activities` and `ods_code` are what
/// access-service registered for it, never what a request claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub kind: CallerKind,
    pub ods_code: OdsCode,
    pub activities: BTreeSet<Activity>,
    /// How strongly a user signed in (CIS2's authentication assurance level); 0 for a system.
    pub assurance_level: u8,
}

/// The parts of a call the rules look at besides the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// For `LookupChild`: the access kind requested.
    pub access_kind: Option<AccessKind>,
    /// For `LookupChild`: the site where the child is seen.
    pub site_ods_code: Option<OdsCode>,
    /// The least assurance level a lookup needs (`CPIS_MIN_AAL`); 0 asks for none.
    pub min_assurance_level: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessDecision {
    /// The call may proceed; `notifies` when the gateway owes an obligation (record the
    /// attendance, notify the LAs).
    Allow {
        notifies: bool,
    },
    Deny(DenyReason),
}

/// What an action needs: one activity, and for some an onboarded organisation of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub activity: Activity,
    pub organisation: Option<OrganisationKind>,
}

/// `None` when nothing can allow the call (a lookup without an access kind).
pub fn requirement(action: Action, access_kind: Option<AccessKind>) -> Option<Requirement> {
    use Action::*;
    let (activity, organisation) = match action {
        LookupChild => (
            access_kind?.required_activity(),
            Some(OrganisationKind::Health),
        ),
        UploadFlags
        | EndFlag
        | DeleteFlag
        | ListFlags
        | ListNotifications
        | WatchNotifications
        | AcknowledgeNotifications => (Activity::LaManage, Some(OrganisationKind::LocalAuthority)),
        // Someone must read the log and onboard the first organisation: no onboarding needed.
        ListAuditEvents | GetCheckpoint | VerifyAuditLog => (Activity::Audit, None),
        UpsertOrganisation
        | ListOrganisations
        | RegisterSystem
        | ListSystems
        | RemoveSystem
        | SetRestriction
        | ClearRestriction
        | MarkNhsNumberInactive
        | ListFailedObligations
        | RetryObligation => (Activity::Admin, None),
    };
    Some(Requirement {
        activity,
        organisation,
    })
}

/// Decides one call. `action` is the action the call names, parsed once where the request
/// was read; `None` when the name is no action of these rules (the conformance table has such
/// rows), which is denied like anything else not named here.
pub fn decide(
    caller: &Caller,
    action: Option<Action>,
    organisation: Option<OrganisationStanding>,
    context: &Context,
) -> AccessDecision {
    let Some(action) = action else {
        return AccessDecision::Deny(DenyReason::MissingActivity);
    };
    let Some(needed) = requirement(action, context.access_kind) else {
        return AccessDecision::Deny(DenyReason::MissingActivity);
    };
    if !holds(caller, needed.activity) {
        return AccessDecision::Deny(DenyReason::MissingActivity);
    }
    if action == Action::LookupChild && caller.assurance_level < context.min_assurance_level {
        return AccessDecision::Deny(DenyReason::InsufficientAssurance);
    }
    if let Some(kind) = needed.organisation {
        let fit = organisation.is_some_and(|o| o.onboarded && o.kind == kind);
        if !fit {
            return AccessDecision::Deny(DenyReason::OrganisationNotOnboarded);
        }
    }
    if action == Action::LookupChild {
        let inside = context
            .site_ods_code
            .as_ref()
            .is_some_and(|site| site.is_within(&caller.ods_code));
        if !inside {
            return AccessDecision::Deny(DenyReason::SettingNotInOrganisation);
        }
    }
    AccessDecision::Allow {
        notifies: action == Action::LookupChild
            && context.access_kind.is_some_and(AccessKind::notifies),
    }
}

/// Lookups are user-present only: a system holds `CPIS_LA_MANAGE` at most, whatever a
/// registry row or a request might say.
fn holds(caller: &Caller, activity: Activity) -> bool {
    let allowed_for_kind = match caller.kind {
        CallerKind::User => true,
        CallerKind::System => activity == Activity::LaManage,
    };
    allowed_for_kind && caller.activities.contains(&activity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ods(s: &str) -> OdsCode {
        OdsCode::parse(s).unwrap()
    }

    fn user(org: &str, activities: &[Activity]) -> Caller {
        Caller {
            kind: CallerKind::User,
            ods_code: ods(org),
            activities: activities.iter().copied().collect(),
            assurance_level: 3,
        }
    }

    fn health(onboarded: bool) -> Option<OrganisationStanding> {
        Some(OrganisationStanding {
            kind: OrganisationKind::Health,
            onboarded,
        })
    }

    fn lookup(kind: AccessKind, site: &str) -> Context {
        Context {
            access_kind: Some(kind),
            site_ods_code: Some(ods(site)),
            min_assurance_level: 3,
        }
    }

    #[test]
    fn a_notifying_lookup_inside_an_onboarded_trust_is_allowed_and_notifies() {
        let d = decide(
            &user("RQX", &[Activity::NotifyingLookup]),
            Some(Action::LookupChild),
            health(true),
            &lookup(AccessKind::Unscheduled, "RQX01"),
        );
        assert_eq!(d, AccessDecision::Allow { notifies: true });
    }

    #[test]
    fn a_silent_lookup_does_not_notify_and_needs_its_own_activity() {
        let ctx = lookup(AccessKind::Scheduled, "RQX");
        assert_eq!(
            decide(
                &user("RQX", &[Activity::SilentLookup]),
                Some(Action::LookupChild),
                health(true),
                &ctx
            ),
            AccessDecision::Allow { notifies: false }
        );
        assert_eq!(
            decide(
                &user("RQX", &[Activity::NotifyingLookup]),
                Some(Action::LookupChild),
                health(true),
                &ctx
            ),
            AccessDecision::Deny(DenyReason::MissingActivity)
        );
    }

    #[test]
    fn checks_run_in_api_order_activity_first() {
        // Everything is wrong: the activity answers.
        let d = decide(
            &user("RQX", &[]),
            Some(Action::LookupChild),
            None,
            &lookup(AccessKind::Unscheduled, "RQY01"),
        );
        assert_eq!(d, AccessDecision::Deny(DenyReason::MissingActivity));
        // Organisation and setting wrong: the organisation answers.
        let d = decide(
            &user("RQX", &[Activity::NotifyingLookup]),
            Some(Action::LookupChild),
            health(false),
            &lookup(AccessKind::Unscheduled, "RQY01"),
        );
        assert_eq!(
            d,
            AccessDecision::Deny(DenyReason::OrganisationNotOnboarded)
        );
    }

    #[test]
    fn a_lookup_below_the_minimum_assurance_is_refused_after_the_activity_and_others_are_not() {
        let weak = Caller {
            assurance_level: 2,
            ..user("RQX", &[Activity::NotifyingLookup, Activity::LaManage])
        };
        let d = decide(
            &weak,
            Some(Action::LookupChild),
            health(false),
            &lookup(AccessKind::Unscheduled, "RQY01"),
        );
        // Before the organisation and the setting, which are wrong too.
        assert_eq!(d, AccessDecision::Deny(DenyReason::InsufficientAssurance));
        // The activity answers first.
        let d = decide(
            &Caller {
                assurance_level: 2,
                ..user("RQX", &[])
            },
            Some(Action::LookupChild),
            health(true),
            &lookup(AccessKind::Unscheduled, "RQX01"),
        );
        assert_eq!(d, AccessDecision::Deny(DenyReason::MissingActivity));
        // At the minimum, allowed.
        let d = decide(
            &Caller {
                assurance_level: 3,
                ..weak.clone()
            },
            Some(Action::LookupChild),
            health(true),
            &lookup(AccessKind::Unscheduled, "RQX01"),
        );
        assert_eq!(d, AccessDecision::Allow { notifies: true });
        // Only lookups ask for it.
        let d = decide(
            &weak,
            Some(Action::ListFlags),
            Some(OrganisationStanding {
                kind: OrganisationKind::LocalAuthority,
                onboarded: true,
            }),
            &Context {
                min_assurance_level: 3,
                ..Context::default()
            },
        );
        assert_eq!(d, AccessDecision::Allow { notifies: false });
    }

    #[test]
    fn systems_never_look_a_child_up() {
        let system = Caller {
            kind: CallerKind::System,
            ods_code: ods("RQX"),
            activities: Activity::ALL.iter().copied().collect(),
            assurance_level: 0,
        };
        let d = decide(
            &system,
            Some(Action::LookupChild),
            health(true),
            &lookup(AccessKind::Unscheduled, "RQX"),
        );
        assert_eq!(d, AccessDecision::Deny(DenyReason::MissingActivity));
    }

    #[test]
    fn unknown_actions_are_denied() {
        let everything = user("RQX", Activity::ALL);
        for name in ["", "lookupchild", "DropDatabase"] {
            assert_eq!(
                decide(
                    &everything,
                    Action::parse(name),
                    health(true),
                    &Context::default()
                ),
                AccessDecision::Deny(DenyReason::MissingActivity)
            );
        }
    }

    #[test]
    fn every_action_has_a_name_that_parses_back() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.name()), Some(*a));
        }
    }
}
