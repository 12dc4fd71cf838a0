//! A `DecideRequest` checked field by field. Malformed input is `INVALID_ARGUMENT` with every
//! violation at once; it is not a decision, so it is never audited.

use crate::audit::chain::Delivery;
use crate::rules::Action;
use cpis_proto::access::DecideRequest;
use platform::Result;
use platform::domain::{Activity, NhsNumber, OdsCode};
use platform::error::Violations;
use platform::requests::{LookupSetting, lookup_setting};
use platform::telemetry::is_trace_id;
use std::collections::BTreeSet;

pub const MAX_ID_LEN: usize = 255;
/// The longest display name recorded (CIS2 names are far shorter).
pub const MAX_NAME_LEN: usize = 256;

/// Who asks. A system's organisation and activities are looked up by access-service; what
/// the request claims for them is never believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    User {
        user_id: String,
        role_code: String,
        ods_code: OdsCode,
        activities: BTreeSet<Activity>,
        /// CIS2's authentication assurance level, as the gateway read it from the token.
        assurance_level: u8,
        /// The display name, recorded with every decision.
        user_name: String,
    },
    System {
        san: String,
        /// What the gateway sent; used only when the SAN is not registered.
        claimed_ods_code: OdsCode,
    },
}

/// A valid decision request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecideInput {
    pub identity: Identity,
    pub action: Action,
    pub nhs_number: Option<NhsNumber>,
    /// For `LookupChild`: the access kind and the setting, checked against each other.
    pub lookup: Option<LookupSetting>,
    pub request_id: String,
    pub fingerprint: Vec<u8>,
    pub trace_id: String,
    pub upload_id: String,
    /// A re-check of a stream's opening decision: audited only if it denies.
    pub recheck: bool,
    /// With a re-check: what the stream relayed since its last delivery record.
    pub delivered: Option<Delivery>,
    /// The least assurance level a lookup needs here (`CPIS_MIN_AAL`), set by the writer.
    pub min_assurance_level: u8,
}

/// The least assurance level a lookup needs unless configured (`CPIS_MIN_AAL`): 3, the level
/// CIS2 gives smartcard-class sign-in.
pub const DEFAULT_MIN_ASSURANCE_LEVEL: u8 = 3;

pub fn validate(request: DecideRequest) -> Result<DecideInput> {
    let mut v = Violations::new();
    let identity = match &request.principal {
        None => {
            v.add("principal", "is required");
            None
        }
        Some(p) if p.user_id.is_empty() == p.system_san.is_empty() => {
            v.add(
                "principal",
                "exactly one of user_id and system_san must be set",
            );
            None
        }
        Some(p) => {
            let ods = v.ods_code("principal.ods_code", &p.ods_code);
            if p.user_id.is_empty() {
                v.text("principal.system_san", &p.system_san, MAX_ID_LEN);
                ods.map(|claimed_ods_code| Identity::System {
                    san: p.system_san.clone(),
                    claimed_ods_code,
                })
            } else {
                v.text("principal.user_id", &p.user_id, MAX_ID_LEN);
                v.text("principal.role_code", &p.role_code, 64);
                v.text("principal.user_name", &p.user_name, MAX_NAME_LEN);
                ods.map(|ods_code| Identity::User {
                    user_id: p.user_id.clone(),
                    role_code: p.role_code.clone(),
                    ods_code,
                    // Unknown codes grant nothing: dropped here, never an error.
                    activities: p
                        .activities
                        .iter()
                        .filter_map(|a| Activity::from_code(a))
                        .collect(),
                    assurance_level: u8::try_from(p.assurance_level).unwrap_or(u8::MAX),
                    user_name: p.user_name.clone(),
                })
            }
        }
    };

    let action = if request.action.is_empty() {
        v.add("action", "is required");
        None
    } else {
        let parsed = Action::parse(&request.action);
        if parsed.is_none() {
            v.add(
                "action",
                "is not the name of a cpis.gateway.v1 rpc access-service decides on",
            );
        }
        parsed
    };

    let nhs_number = if request.nhs_number.is_empty() {
        if action == Some(Action::LookupChild) {
            v.add("nhs_number", "is required for LookupChild");
        }
        None
    } else {
        v.nhs_number("nhs_number", &request.nhs_number)
    };

    let lookup = if action == Some(Action::LookupChild) {
        match &request.setting {
            // LookupChildRequest's own rule (platform::requests), so a lookup the gateway let
            // through is read alike here.
            Some(setting) => lookup_setting(&mut v, request.access_kind, setting),
            None => {
                // The access kind is still checked, so every violation is reported at once.
                v.access_kind("access_kind", request.access_kind);
                v.add("setting", "is required for LookupChild");
                None
            }
        }
    } else {
        if request.access_kind != 0 {
            v.add(
                "access_kind",
                "must be ACCESS_KIND_UNSPECIFIED except for LookupChild",
            );
        }
        if request.setting.is_some() {
            v.add("setting", "must be unset except for LookupChild");
        }
        None
    };

    v.text("request_id", &request.request_id, MAX_ID_LEN);
    if !request.request_id.is_empty() && request.request_fingerprint.len() != 32 {
        v.add(
            "request_fingerprint",
            "must be the 32-byte SHA-256 of the request when request_id is set",
        );
    }
    if !request.trace_id.is_empty() && !is_trace_id(&request.trace_id) {
        v.add(
            "trace_id",
            "must be a W3C trace id: 32 lower-case hexadecimal characters, not all zero",
        );
    }
    v.text("upload_id", &request.upload_id, MAX_ID_LEN);
    if !request.upload_id.is_empty() && action.is_some_and(|a| a != Action::UploadFlags) {
        v.add("upload_id", "must be empty except for UploadFlags");
    }
    if request.recheck && action.is_some_and(|a| a != Action::WatchNotifications) {
        v.add("recheck", "is only for WatchNotifications");
    }
    let delivered = request.delivered.as_ref().and_then(|d| {
        if !request.recheck {
            v.add("delivered", "is only sent with a re-check");
        }
        let width = d.last_cursor.checked_sub(d.first_cursor).map(|w| w + 1);
        if d.first_cursor == 0 || d.count == 0 || width.is_none_or(|w| d.count > w) {
            v.add(
                "delivered",
                "must name cursors 1 <= first_cursor <= last_cursor and a count of at least 1, at most the range's width",
            );
            return None;
        }
        Some(Delivery {
            first: d.first_cursor,
            last: d.last_cursor,
            count: d.count,
        })
    });
    let input = identity.zip(action).map(|(identity, action)| DecideInput {
        identity,
        action,
        nhs_number,
        lookup,
        request_id: request.request_id,
        fingerprint: request.request_fingerprint,
        trace_id: request.trace_id,
        upload_id: request.upload_id,
        recheck: request.recheck,
        delivered,
        min_assurance_level: DEFAULT_MIN_ASSURANCE_LEVEL,
    });
    v.check(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::access::Principal;
    use cpis_proto::gateway::Setting;
    use platform::domain::{AccessKind, SettingType};
    use proptest::prelude::*;

    fn fields(request: DecideRequest) -> Vec<String> {
        match validate(request) {
            Err(platform::Error::InvalidArgument(vs)) => vs.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn lookup_request() -> DecideRequest {
        DecideRequest {
            principal: Some(Principal {
                user_id: "dr.jones".into(),
                ods_code: "rqx".into(),
                role_code: "R8000".into(),
                activities: vec!["B0107".into(), "NOT_AN_ACTIVITY".into()],
                assurance_level: 3,
                ..Default::default()
            }),
            action: "LookupChild".into(),
            nhs_number: "943 476 5919".into(),
            access_kind: AccessKind::Unscheduled.into(),
            setting: Some(Setting {
                ods_code: "rqx01".into(),
                setting_type: SettingType::EmergencyDepartment.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_well_formed_lookup_is_normalised() {
        let input = validate(lookup_request()).unwrap();
        let Identity::User {
            ods_code,
            activities,
            ..
        } = &input.identity
        else {
            panic!("a user")
        };
        assert_eq!(ods_code.as_str(), "RQX");
        assert_eq!(activities.len(), 1);
        assert_eq!(input.nhs_number.unwrap().as_str(), "9434765919");
        assert_eq!(input.lookup.unwrap().site.as_str(), "RQX01");
    }

    #[test]
    fn control_characters_in_a_principal_or_an_id_are_invalid_and_never_stored() {
        let mut r = lookup_request();
        if let Some(p) = r.principal.as_mut() {
            p.user_id = "dr.jones\0".into();
        }
        r.request_id = "r\u{1b}1".into();
        r.request_fingerprint = vec![0; 32];
        assert_eq!(fields(r), ["principal.user_id", "request_id"]);
    }

    #[test]
    fn decide_rejects_an_access_kind_inconsistent_with_the_setting_type() {
        let mut r = lookup_request();
        r.access_kind = AccessKind::Scheduled.into();
        assert_eq!(fields(r), ["setting.setting_type"]);
    }

    #[test]
    fn decide_reports_every_violation_at_once() {
        let r = DecideRequest {
            principal: Some(Principal::default()),
            action: "Nope".into(),
            nhs_number: "123".into(),
            request_id: "r1".into(),
            trace_id: "XYZ".into(),
            ..Default::default()
        };
        assert_eq!(
            fields(r),
            [
                "principal",
                "action",
                "nhs_number",
                "request_fingerprint",
                "trace_id"
            ]
        );
    }

    #[test]
    fn a_trace_id_must_be_a_w3c_one() {
        let mut r = lookup_request();
        r.trace_id = "0".repeat(32);
        assert_eq!(fields(r), ["trace_id"]);
        let mut r = lookup_request();
        r.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
        assert!(validate(r).is_ok());
    }

    #[test]
    fn a_principal_with_both_user_and_system_is_invalid() {
        let mut r = lookup_request();
        if let Some(p) = r.principal.as_mut() {
            p.system_san = "spiffe://x".into();
        }
        assert_eq!(fields(r), ["principal"]);
    }

    proptest! {
        #[test]
        fn validation_never_panics(
            user in ".{0,8}", san in ".{0,8}", ods in ".{0,10}", action in ".{0,14}",
            nhs in "[0-9 ]{0,12}", kind in -1i32..4, setting_type in -1i32..18, site in ".{0,9}",
            rid in ".{0,4}", fp in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let _ = validate(DecideRequest {
                principal: Some(Principal { user_id: user, system_san: san, ods_code: ods, ..Default::default() }),
                action, nhs_number: nhs, access_kind: kind,
                setting: Some(Setting { ods_code: site, setting_type }),
                request_id: rid, request_fingerprint: fp,
                ..Default::default()
            });
        }
    }
}
