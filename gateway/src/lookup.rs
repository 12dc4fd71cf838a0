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
use cpis_proto::gateway::{AttendanceSummary, LookupChildRequest, LookupChildResponse, Setting};
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

        Ok(LookupChildResponse {
            nhs_number: nhs,
            flagged: !flag_set.flags.is_empty(),
            flags: flag_set.flags,
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
