//! Calendar dates and instants. Dates on the wire are ISO 8601 `YYYY-MM-DD` strings (empty
//! when absent); "today" is the date in England (Europe/London) of an instant in UTC.

use chrono::{DateTime, NaiveDate, Utc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("must be a date written YYYY-MM-DD")]
    Malformed,
    #[error("is not a calendar date")]
    Impossible,
}

/// Parses exactly `YYYY-MM-DD` (no time, no shorter forms): integrators see one format only.
pub fn parse_date(input: &str) -> Result<NaiveDate, DateError> {
    let b = input.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return Err(DateError::Malformed);
    }
    NaiveDate::parse_from_str(input, "%Y-%m-%d").map_err(|_| DateError::Impossible)
}

/// An optional date: the empty string means absent.
pub fn parse_optional_date(input: &str) -> Result<Option<NaiveDate>, DateError> {
    if input.is_empty() {
        Ok(None)
    } else {
        parse_date(input).map(Some)
    }
}

/// The wire form of an optional date.
pub fn format_optional_date(date: Option<NaiveDate>) -> String {
    date.map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The calendar date in England at an instant: the "today" of every date rule.
pub fn england_date(instant: DateTime<Utc>) -> NaiveDate {
    instant
        .with_timezone(&chrono_tz::Europe::London)
        .date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    #[test]
    fn parses_only_the_iso_form() {
        assert_eq!(
            parse_date("2024-02-29"),
            Ok(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        assert_eq!(parse_date("2023-02-29"), Err(DateError::Impossible));
        assert_eq!(parse_date("2024-13-01"), Err(DateError::Impossible));
        for bad in [
            "2024-1-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-01T00:00",
            "",
            "yyyy-mm-dd",
        ] {
            assert_eq!(parse_date(bad), Err(DateError::Malformed), "{bad}");
        }
        assert_eq!(parse_optional_date(""), Ok(None));
    }

    #[test]
    fn england_date_follows_british_summer_time() {
        // 23:30 UTC on 30 June is 00:30 on 1 July in London (BST, UTC+1).
        let summer = Utc.with_ymd_and_hms(2025, 6, 30, 23, 30, 0).unwrap();
        assert_eq!(
            england_date(summer),
            NaiveDate::from_ymd_opt(2025, 7, 1).unwrap()
        );
        // In winter London is UTC.
        let winter = Utc.with_ymd_and_hms(2025, 12, 31, 23, 30, 0).unwrap();
        assert_eq!(
            england_date(winter),
            NaiveDate::from_ymd_opt(2025, 12, 31).unwrap()
        );
    }

    proptest! {
        #[test]
        fn formatted_dates_parse_back(days in 0i64..200_000) {
            let d = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap() + chrono::Days::new(days as u64);
            prop_assert_eq!(parse_optional_date(&format_optional_date(Some(d))), Ok(Some(d)));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,20}") {
            let _ = parse_date(&s);
        }
    }
}
