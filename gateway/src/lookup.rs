//! `LookupChild`: one decision, then the flags and the attendance summary fetched in parallel
//! within the caller's deadline, composed under ARCHITECTURE.md rules 1 and 3:
//! - the registry unreachable → `UNAVAILABLE` with RetryInfo, never "not flagged";
//! - the attendance log unreachable → the flags, with `attendance.available = false`;
//! - a notifying read carries out its obligation (record the attendance, store the LA's
//!   notifications) before answering; if that fails the reconciler finishes it later.

use crate::core::{Core, Intent, fingerprint};
use crate::deadline::Deadline;
use crate::obligations;
use cpis_proto::attendance::SummarizeAttendancesRequest;
use cpis_proto::flag::GetFlagsRequest;
use cpis_proto::gateway::{
    AttendanceSummary, Flag, LookupChildRequest, LookupChildResponse, Setting,
};
use platform::domain::NhsNumber;
use platform::error::{Error, Result};
use platform::requests::LookupSetting;

/// A lookup request after validation (platform's validator, the one access-service applies
/// to the same rule).
struct ValidLookup {
    nhs_number: NhsNumber,
    intent: Intent,
}

/// Every problem at once; nothing is decided or written for a bad request.
fn validate(request: &LookupChildRequest) -> Result<ValidLookup> {
    let lookup = platform::requests::lookup_child(request)?;
    let LookupSetting {
        access_kind,
        site,
        setting_type,
    } = lookup.setting;
    let print = fingerprint(&[
        lookup.nhs_number.as_str().as_bytes(),
        access_kind.as_str().as_bytes(),
        site.as_str().as_bytes(),
        setting_type.as_str().as_bytes(),
    ]);
    let mut intent = Intent::new("LookupChild").about(Some(lookup.nhs_number));
    intent.access_kind = Some(access_kind);
    intent.setting = Some(Setting {
        ods_code: site.as_str().to_owned(),
        setting_type: setting_type.into(),
    });
    intent.request_id = lookup.request_id;
    intent.fingerprint = print;
    Ok(ValidLookup {
        nhs_number: lookup.nhs_number,
        intent,
    })
}

/// Flags one answer carries: enough for any child in practice (an LA holds at most 10 episodes
/// of a type on a number), small enough that an answer always fits a client's 4 MiB.
const MAX_FLAGS_IN_ANSWER: usize = 50;

/// At most `max` of `flags`, and whether any were left out: active flags first, and at least
/// one from every owning LA (the first of each LA's, active first), so whoever reads the answer
/// knows every LA to phone. The registry's order is kept within each group.
fn at_most(max: usize, flags: Vec<Flag>) -> (Vec<Flag>, bool) {
    if flags.len() <= max {
        return (flags, false);
    }
    let mut ordered: Vec<(usize, Flag)> = flags.into_iter().enumerate().collect();
    // Active before ended, then the registry's order.
    ordered.sort_by_key(|(i, f)| (!f.active, *i));
    let la = |f: &Flag| {
        f.local_authority
            .as_ref()
            .map(|l| l.ods_code.clone())
            .unwrap_or_default()
    };
    let mut seen = std::collections::HashSet::new();
    let (firsts, rest): (Vec<_>, Vec<_>) =
        ordered.into_iter().partition(|(_, f)| seen.insert(la(f)));
    let mut kept: Vec<(usize, Flag)> = firsts;
    kept.truncate(max);
    let room = max - kept.len();
    kept.extend(rest.into_iter().take(room));
    kept.sort_by_key(|(i, f)| (!f.active, *i));
    (kept.into_iter().map(|(_, f)| f).collect(), true)
}

impl Core {
    pub async fn lookup_child(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &http::Extensions,
        request: LookupChildRequest,
    ) -> Result<LookupChildResponse> {
        let deadline = Deadline::from_metadata(metadata);
        let principal = self.authenticate(metadata, extensions).await?;
        let lookup = validate(&request)?;
        let allowed = self
            .decide(principal, lookup.intent, metadata, &deadline)
            .await?;
        let (principal, decision) = (allowed.principal, allowed.decision);
        let as_of = decision
            .decided_at
            .ok_or_else(|| Error::internal("decision without an instant"))?;
        let nhs = lookup.nhs_number.as_str().to_owned();
        let obligation = decision.obligation.clone();

        let flags_request = GetFlagsRequest {
            nhs_numbers: vec![nhs.clone()],
            as_of: Some(as_of),
            notify: obligation.as_ref().map(obligations::access_record),
        };
        let summary_request = SummarizeAttendancesRequest {
            nhs_numbers: vec![nhs.clone()],
            as_of: Some(as_of),
            exclude_lookup_id: decision.lookup_id.clone(),
        };

        // The principal the lookup was decided for goes with every read of personal data.
        let flags = self.backends.flag.call(
            flags_request,
            Some(&principal),
            &deadline,
            |mut c, r| async move { c.get_flags(r).await },
        );
        let summary = self.backends.attendance.call(
            summary_request,
            Some(&principal),
            &deadline,
            |mut c, r| async move { c.summarize_attendances(r).await },
        );
        let record = async {
            match &obligation {
                Some(o) => Some(obligations::record_attendance(self, o, &deadline).await),
                None => None,
            }
        };
        let (flags, summary, recorded) = tokio::join!(flags, summary, record);

        // Rule 1: without the registry's answer there is no answer.
        let flags = flags?;
        let flag_set = flags
            .results
            .into_iter()
            .find(|r| r.nhs_number == nhs)
            .unwrap_or_default();

        let attendance = match summary {
            Ok(response) => {
                let mut s = response
                    .results
                    .into_iter()
                    .find(|r| r.nhs_number == nhs)
                    .and_then(|r| r.summary)
                    .unwrap_or_default();
                s.available = true;
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "attendance log unavailable: answering with flags only");
                AttendanceSummary {
                    available: false,
                    ..Default::default()
                }
            }
        };

        // Rule 3: the obligation is done once both halves are; otherwise the reconciler will.
        if let (Some(o), Some(Ok(()))) = (&obligation, recorded) {
            obligations::complete(self, &o.lookup_id, "inline", &deadline).await;
        }

        let flagged = !flag_set.flags.is_empty();
        let (flags, flags_truncated) = at_most(MAX_FLAGS_IN_ANSWER, flag_set.flags);
        Ok(LookupChildResponse {
            nhs_number: nhs,
            flagged,
            flags,
            flags_truncated,
            attendance: Some(attendance),
            lookup_id: decision.lookup_id,
            looked_up_at: Some(as_of),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::gateway::{AccessKind, SettingType};

    fn request(kind: AccessKind, setting_type: SettingType) -> LookupChildRequest {
        LookupChildRequest {
            nhs_number: "943 476 5919".into(),
            access_kind: kind.into(),
            setting: Some(Setting {
                ods_code: "rqx01".into(),
                setting_type: setting_type.into(),
            }),
            request_id: String::new(),
        }
    }

    fn flag(la: &str, active: bool) -> Flag {
        Flag {
            active,
            local_authority: Some(cpis_proto::gateway::LocalAuthorityContact {
                ods_code: la.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_answer_holds_at_most_fifty_flags_active_first_and_every_la() {
        // One LA with 60 ended flags listed first, then two LAs with one active flag each.
        let mut flags: Vec<Flag> = (0..60).map(|_| flag("706", false)).collect();
        flags.push(flag("709", true));
        flags.push(flag("710", true));
        let (kept, truncated) = at_most(50, flags);
        assert!(truncated);
        assert_eq!(kept.len(), 50);
        assert!(kept[0].active && kept[1].active, "active flags first");
        let las: std::collections::HashSet<_> = kept
            .iter()
            .map(|f| f.local_authority.as_ref().unwrap().ods_code.clone())
            .collect();
        assert_eq!(las.len(), 3, "every owning LA is shown");
        let few = vec![flag("706", true)];
        assert_eq!(at_most(50, few), (vec![flag("706", true)], false));
    }

    #[test]
    fn a_valid_lookup_is_normalised() {
        let v = validate(&request(
            AccessKind::Unscheduled,
            SettingType::EmergencyDepartment,
        ))
        .unwrap();
        assert_eq!(v.nhs_number.as_str(), "9434765919");
        assert_eq!(v.intent.setting.unwrap().ods_code, "RQX01");
    }

    #[test]
    fn the_same_request_has_the_same_fingerprint_and_another_a_different_one() {
        let a = validate(&request(
            AccessKind::Unscheduled,
            SettingType::EmergencyDepartment,
        ))
        .unwrap();
        let b = validate(&request(
            AccessKind::Unscheduled,
            SettingType::EmergencyDepartment,
        ))
        .unwrap();
        let c = validate(&request(
            AccessKind::Unscheduled,
            SettingType::MinorInjuryUnit,
        ))
        .unwrap();
        assert_eq!(a.intent.fingerprint, b.intent.fingerprint);
        assert_ne!(a.intent.fingerprint, c.intent.fingerprint);
    }
}
