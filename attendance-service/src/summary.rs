//! What `SummarizeAttendances` answers: rolling counts back from an instant and the newest
//! attendances (DOMAIN.md "Dates and windows"), and the request that asks for them.

use crate::attendance::{MAX_LOOKUP_ID, instant};
use chrono::{DateTime, Duration, Utc};
use cpis_proto::attendance::{PersonAttendances, SummarizeAttendancesRequest};
use cpis_proto::gateway;
use platform::domain::{NhsNumber, SettingType, to_timestamp};
use platform::error::Violations;

/// The rolling windows, in days of exactly 24 hours.
pub const WINDOW_DAYS: [i64; 3] = [30, 90, 365];
/// How many of the newest attendances a summary lists.
pub const RECENT_LIMIT: usize = 25;
/// How many people one call may ask about.
pub const MAX_NUMBERS: usize = 1000;

/// A validated `SummarizeAttendancesRequest`.
#[derive(Clone, Debug)]
pub struct SummaryRequest {
    /// As requested (for the answer), with the parsed number.
    pub people: Vec<(String, NhsNumber)>,
    pub as_of: DateTime<Utc>,
    /// Empty for none.
    pub exclude_lookup_id: String,
}

impl SummaryRequest {
    pub fn from_request(request: &SummarizeAttendancesRequest) -> platform::Result<Self> {
        let mut v = Violations::new();
        let count = request.nhs_numbers.len();
        if count == 0 {
            v.add("nhs_numbers", "must hold at least one NHS number");
        } else if count > MAX_NUMBERS {
            v.add(
                "nhs_numbers",
                format!("must hold at most {MAX_NUMBERS} NHS numbers, not {count}"),
            );
        }
        let mut people = Vec::with_capacity(count.min(MAX_NUMBERS));
        if count <= MAX_NUMBERS {
            for (i, raw) in request.nhs_numbers.iter().enumerate() {
                if let Some(n) = v.nhs_number(&format!("nhs_numbers[{i}]"), raw) {
                    people.push((raw.clone(), n));
                }
            }
        }
        let as_of = instant(&mut v, "as_of", request.as_of.as_ref());
        v.max_len(
            "exclude_lookup_id",
            &request.exclude_lookup_id,
            MAX_LOOKUP_ID,
        );
        v.finish()?;
        let as_of = as_of
            .ok_or_else(|| platform::Error::internal("summary validation lost a violation"))?;
        Ok(SummaryRequest {
            people,
            as_of,
            exclude_lookup_id: request.exclude_lookup_id.clone(),
        })
    }
}

/// The window edges for an instant: an attendance counts in the N-day window when
/// `attended_at > as_of - N x 24 h` (and `attended_at <= as_of`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub as_of: DateTime<Utc>,
    /// Exclusive lower bounds, in the order of [`WINDOW_DAYS`].
    pub after: [DateTime<Utc>; 3],
}

impl Windows {
    pub fn ending_at(as_of: DateTime<Utc>) -> Self {
        Windows {
            as_of,
            after: WINDOW_DAYS.map(|days| as_of - Duration::hours(24 * days)),
        }
    }
}

/// One of the newest attendances, as the gateway shows it (no user id: kept for audit only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentAttendance {
    pub attended_at: DateTime<Utc>,
    pub ods_code: String,
    pub organisation_name: String,
    pub setting_type: SettingType,
    pub role_code: String,
}

/// One person's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub last_30_days: u32,
    pub last_90_days: u32,
    pub last_365_days: u32,
    /// Newest first, at most [`RECENT_LIMIT`].
    pub recent: Vec<RecentAttendance>,
}

impl Summary {
    pub fn to_proto(&self, nhs_number: String) -> PersonAttendances {
        PersonAttendances {
            nhs_number,
            summary: Some(gateway::AttendanceSummary {
                available: true,
                last_30_days: self.last_30_days,
                last_90_days: self.last_90_days,
                last_365_days: self.last_365_days,
                recent: self
                    .recent
                    .iter()
                    .map(|r| gateway::Attendance {
                        attended_at: Some(to_timestamp(r.attended_at)),
                        ods_code: r.ods_code.clone(),
                        organisation_name: r.organisation_name.clone(),
                        setting_type: i32::from(r.setting_type),
                        role_code: r.role_code.clone(),
                    })
                    .collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn request(numbers: Vec<String>) -> SummarizeAttendancesRequest {
        SummarizeAttendancesRequest {
            nhs_numbers: numbers,
            as_of: Some(to_timestamp(
                Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap(),
            )),
            exclude_lookup_id: String::new(),
        }
    }

    fn fields(result: platform::Result<SummaryRequest>) -> Vec<String> {
        match result {
            Err(platform::Error::InvalidArgument(vs)) => vs.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_number_is_named_by_its_index() {
        let r = request(vec![
            "9434765919".into(),
            "943 476 5919".into(),
            "12".into(),
            "9434765918".into(),
        ]);
        assert_eq!(
            fields(SummaryRequest::from_request(&r)),
            ["nhs_numbers[2]", "nhs_numbers[3]"]
        );
    }

    #[test]
    fn an_empty_list_a_list_over_1000_and_a_missing_as_of_are_refused() {
        let mut r = request(vec![]);
        r.as_of = None;
        assert_eq!(
            fields(SummaryRequest::from_request(&r)),
            ["nhs_numbers", "as_of"]
        );
        let r = request(vec!["9434765919".into(); MAX_NUMBERS + 1]);
        assert_eq!(fields(SummaryRequest::from_request(&r)), ["nhs_numbers"]);
        let r = request(vec!["9434765919".into(); MAX_NUMBERS]);
        assert_eq!(SummaryRequest::from_request(&r).unwrap().people.len(), 1000);
    }

    #[test]
    fn numbers_are_answered_as_requested() {
        let r = request(vec!["943 476 5919".into()]);
        let parsed = SummaryRequest::from_request(&r).unwrap();
        assert_eq!(parsed.people[0].0, "943 476 5919");
        assert_eq!(parsed.people[0].1.as_str(), "9434765919");
    }

    proptest! {
        #[test]
        fn windows_are_whole_days_of_24_hours(micros in 100_000_000_000_000i64..253_402_300_799_000_000) {
            let as_of = DateTime::from_timestamp_micros(micros).unwrap();
            let w = Windows::ending_at(as_of);
            for (edge, days) in w.after.iter().zip(WINDOW_DAYS) {
                prop_assert_eq!((as_of - *edge).num_microseconds(), Some(days * 86_400_000_000));
            }
        }
    }
}
