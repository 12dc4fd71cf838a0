//! An attendance as this service accepts it: what `RecordAttendance` validates before
//! anything is written.

use chrono::{DateTime, SubsecRound, Utc};
use cpis_proto::attendance::RecordAttendanceRequest;
use platform::domain::{AccessKind, NhsNumber, OdsCode, SettingType, from_timestamp};
use platform::error::Violations;

/// Bounds on free text, so one request cannot fill the table; generous for what fills them
/// (lookup ids are audit references, names are organisation names).
pub const MAX_LOOKUP_ID: usize = 128;
pub const MAX_ORGANISATION_NAME: usize = 255;
pub const MAX_USER_ID: usize = 255;
pub const MAX_ROLE_CODE: usize = 32;

/// One notifying lookup from unscheduled care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attendance {
    pub lookup_id: String,
    pub nhs_number: NhsNumber,
    /// Whole microseconds: see [`instant`].
    pub attended_at: DateTime<Utc>,
    pub site_ods_code: OdsCode,
    pub organisation_name: String,
    pub setting_type: SettingType,
    pub user_id: String,
    pub role_code: String,
}

impl Attendance {
    /// Every problem of the request at once, as field violations named by proto field.
    pub fn from_request(request: &RecordAttendanceRequest) -> platform::Result<Attendance> {
        let mut v = Violations::new();
        if request.lookup_id.trim().is_empty() {
            v.add("lookup_id", "must not be empty");
        }
        v.max_len("lookup_id", &request.lookup_id, MAX_LOOKUP_ID);
        let nhs_number = v.nhs_number("nhs_number", &request.nhs_number);
        let attended_at = instant(&mut v, "attended_at", request.attended_at.as_ref());
        let site_ods_code = v.ods_code("site_ods_code", &request.site_ods_code);
        v.max_len(
            "organisation_name",
            &request.organisation_name,
            MAX_ORGANISATION_NAME,
        );
        let setting_type = unscheduled_setting(&mut v, "setting_type", request.setting_type);
        v.max_len("user_id", &request.user_id, MAX_USER_ID);
        v.max_len("role_code", &request.role_code, MAX_ROLE_CODE);
        v.finish()?;
        match (nhs_number, attended_at, site_ods_code, setting_type) {
            (Some(nhs_number), Some(attended_at), Some(site_ods_code), Some(setting_type)) => {
                Ok(Attendance {
                    lookup_id: request.lookup_id.clone(),
                    nhs_number,
                    attended_at,
                    site_ods_code,
                    organisation_name: request.organisation_name.clone(),
                    setting_type,
                    user_id: request.user_id.clone(),
                    role_code: request.role_code.clone(),
                })
            }
            // Unreachable: every None above added a violation and `finish` returned it.
            _ => Err(platform::Error::internal(
                "attendance validation lost a violation",
            )),
        }
    }
}

/// Only unscheduled care makes attendances; a scheduled setting here is a gateway bug or a
/// forged call, and must not count against a child.
fn unscheduled_setting(v: &mut Violations, field: &str, value: i32) -> Option<SettingType> {
    let setting = v.setting_type(field, value)?;
    if setting.access_kind() == AccessKind::Unscheduled {
        Some(setting)
    } else {
        v.add(
            field,
            format!(
                "SETTING_TYPE_{} is a scheduled setting type: only unscheduled care records attendances",
                setting.as_str()
            ),
        );
        None
    }
}

/// The earliest and latest instants accepted. Four-digit years keep SQLite's text timestamps
/// in the same order as the instants they encode.
pub fn earliest_instant() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

pub fn latest_instant() -> DateTime<Utc> {
    // 9999-12-31T23:59:59Z
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A required instant, truncated to whole microseconds: PostgreSQL keeps no more, and an
/// instant must compare the same on SQLite as on PostgreSQL (window edges are exact).
pub fn instant(
    v: &mut Violations,
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    let Some(ts) = value else {
        v.add(field, "is required");
        return None;
    };
    match from_timestamp(ts) {
        Some(t) if (earliest_instant()..=latest_instant()).contains(&t) => Some(t.trunc_subsecs(6)),
        _ => {
            v.add(
                field,
                "must be a valid instant between 1970-01-01 and 9999-12-31 (UTC)",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cpis_proto::gateway;
    use platform::domain::to_timestamp;
    use proptest::prelude::*;

    fn good() -> RecordAttendanceRequest {
        RecordAttendanceRequest {
            lookup_id: "lookup-1".into(),
            nhs_number: "9434765919".into(),
            attended_at: Some(to_timestamp(
                Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap(),
            )),
            site_ods_code: "rqx01".into(),
            organisation_name: "Homerton".into(),
            setting_type: gateway::SettingType::EmergencyDepartment as i32,
            user_id: "u1".into(),
            role_code: "R8000".into(),
        }
    }

    fn fields(result: platform::Result<Attendance>) -> Vec<String> {
        match result {
            Err(platform::Error::InvalidArgument(vs)) => vs.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_good_request_is_normalised() {
        let a = Attendance::from_request(&good()).unwrap();
        assert_eq!(a.site_ods_code.as_str(), "RQX01");
        assert_eq!(a.setting_type, SettingType::EmergencyDepartment);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let request = RecordAttendanceRequest {
            lookup_id: " ".into(),
            nhs_number: "123".into(),
            attended_at: None,
            site_ods_code: "R!".into(),
            setting_type: 0,
            ..good()
        };
        assert_eq!(
            fields(Attendance::from_request(&request)),
            [
                "lookup_id",
                "nhs_number",
                "attended_at",
                "site_ods_code",
                "setting_type"
            ]
        );
    }

    #[test]
    fn a_scheduled_setting_type_is_refused() {
        let request = RecordAttendanceRequest {
            setting_type: gateway::SettingType::GpPractice as i32,
            ..good()
        };
        assert_eq!(fields(Attendance::from_request(&request)), ["setting_type"]);
    }

    #[test]
    fn oversized_text_is_refused() {
        let long = "x".repeat(300);
        let request = RecordAttendanceRequest {
            lookup_id: long.clone(),
            organisation_name: long.clone(),
            user_id: long.clone(),
            role_code: long,
            ..good()
        };
        assert_eq!(
            fields(Attendance::from_request(&request)),
            ["lookup_id", "organisation_name", "user_id", "role_code"]
        );
    }

    #[test]
    fn instants_outside_four_digit_years_are_refused() {
        for seconds in [-1, 253_402_300_800] {
            let request = RecordAttendanceRequest {
                attended_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                ..good()
            };
            assert_eq!(fields(Attendance::from_request(&request)), ["attended_at"]);
        }
    }

    proptest! {
        #[test]
        fn instants_keep_whole_microseconds(seconds in 0i64..253_402_300_799, nanos in 0i32..1_000_000_000) {
            let mut v = Violations::new();
            let t = instant(&mut v, "t", Some(&prost_types::Timestamp { seconds, nanos })).unwrap();
            prop_assert_eq!(t.timestamp(), seconds);
            prop_assert_eq!(t.timestamp_subsec_nanos(), (nanos as u32 / 1000) * 1000);
        }

        /// SQLite stores instants as text and compares them as text: that order must be the
        /// instants' order, or window edges would move on SQLite.
        #[test]
        fn sqlite_text_order_is_instant_order(
            a in 0i64..253_402_300_799_000_000,
            b in 0i64..253_402_300_799_000_000,
            near in proptest::bool::ANY,
        ) {
            let b = if near { a + (b % 2_000_001) - 1_000_000 } else { b }.max(0);
            let a = DateTime::from_timestamp_micros(a).unwrap();
            let b = DateTime::from_timestamp_micros(b).unwrap();
            let text = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
            prop_assert_eq!(a.cmp(&b), text(a).cmp(&text(b)));
        }

        #[test]
        fn nhs_numbers_that_are_not_ten_digits_are_refused(s in "[0-9]{0,9}|[0-9]{11,12}|[0-9]{5}[a-z][0-9]{4}") {
            let request = RecordAttendanceRequest { nhs_number: s, ..good() };
            prop_assert_eq!(fields(Attendance::from_request(&request)), ["nhs_number"]);
        }
    }
}
