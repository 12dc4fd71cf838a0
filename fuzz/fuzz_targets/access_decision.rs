//! The access decision function (access-service's pure rules) over arbitrary callers, actions,
//! organisations and contexts: it never panics, a canary principal with no activities is never
//! allowed anything, adding an activity never takes an access away, and a system never looks a
//! child up.

#![no_main]

use cpis_domain::{AccessKind, Activity, OdsCode, OrganisationKind};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;

#[path = "../../access-service/src/rules.rs"]
#[allow(dead_code)]
mod rules;

use rules::{AccessDecision, Action, Caller, CallerKind, Context, OrganisationStanding};

const CODES: [&str; 6] = ["RQX", "RQX01", "RQY01", "706", "X26", "A81001"];

fn pick<T: Copy>(items: &[T], byte: u8) -> T {
    items[byte as usize % items.len()]
}

fn ods(byte: u8) -> OdsCode {
    OdsCode::parse(pick(&CODES, byte)).unwrap()
}

fn allowed(decision: &AccessDecision) -> bool {
    matches!(decision, AccessDecision::Allow { .. })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let activities: BTreeSet<Activity> =
        Activity::ALL.iter().enumerate().filter(|(i, _)| data[0] & (1 << i) != 0).map(|(_, a)| *a).collect();
    let kind = if data[1] & 1 == 0 { CallerKind::User } else { CallerKind::System };
    // The level in the top bits of the kind byte: 0 to 7, against a minimum of 0 to 4.
    let caller = Caller { kind, ods_code: ods(data[2]), activities, assurance_level: data[1] >> 5 };
    // Known actions mostly, but also anything at all.
    let action = if data[3] < 230 {
        pick(Action::ALL, data[3]).name().to_owned()
    } else {
        String::from_utf8_lossy(&data[8..]).into_owned()
    };
    let organisation = match data[4] % 3 {
        0 => None,
        k => Some(OrganisationStanding {
            kind: if k == 1 { OrganisationKind::Health } else { OrganisationKind::LocalAuthority },
            onboarded: data[4] & 0x80 != 0,
        }),
    };
    let context = Context {
        access_kind: match data[5] % 3 {
            0 => None,
            1 => Some(AccessKind::Unscheduled),
            _ => Some(AccessKind::Scheduled),
        },
        site_ods_code: if data[6] & 1 == 0 { None } else { Some(ods(data[7])) },
        min_assurance_level: (data[6] >> 1) % 5,
    };

    // Names are parsed once, as access-service parses a request; an unknown one is `None`.
    let parsed = Action::parse(&action);
    let decision = rules::decide(&caller, parsed, organisation, &context);

    // The canary: no activities, never allowed, whatever else is true.
    let canary = Caller { activities: BTreeSet::new(), ..caller.clone() };
    assert!(!allowed(&rules::decide(&canary, parsed, organisation, &context)));

    // A lookup below the minimum assurance level is never allowed.
    if action == "LookupChild" && caller.assurance_level < context.min_assurance_level {
        assert!(!allowed(&decision));
    }

    // Systems never look a child up.
    if caller.kind == CallerKind::System && action == "LookupChild" {
        assert!(!allowed(&decision));
    }

    // Monotone: one more activity never removes an access.
    if allowed(&decision) {
        for extra in Activity::ALL {
            let mut more = caller.clone();
            more.activities.insert(*extra);
            assert!(allowed(&rules::decide(&more, parsed, organisation, &context)));
        }
    }
    if let AccessDecision::Allow { notifies } = decision {
        assert_eq!(notifies, action == "LookupChild" && context.access_kind == Some(AccessKind::Unscheduled));
    }
});
