//! The pure rules of the registry, with no I/O: when a flag is visible and active
//! (DOMAIN.md "Dates and windows"), and how an uploaded record is judged (the record codes of
//! types.proto). Restrictions are the one record rule not here: they need the database and are
//! checked inside the upload's transaction.

use chrono::{Days, NaiveDate};
use cpis_proto::gateway::{FlagRecord, RecordCode};
use platform::domain::{
    DateError, FlagType, NhsNumber, NhsNumberError, parse_date, parse_optional_date,
};
use platform::requests::{
    MAX_FLAG_RECORD_BYTES, MAX_RECORD_DATE_BYTES, MAX_RECORD_EMAIL_BYTES,
    MAX_RECORD_NHS_NUMBER_BYTES, MAX_RECORD_PHONE_BYTES,
};

/// CPP and LAC stay visible, shown as ended, for this long after their end date.
pub const ENDED_PLAN_WINDOW: Days = Days::new(365);
/// UCPP stays visible this long after the earlier of its due date and end date.
pub const UNBORN_PLAN_WINDOW: Days = Days::new(28);

/// The dates that decide a flag's visibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagDates {
    pub flag_type: FlagType,
    pub start: NaiveDate,
    pub end: Option<NaiveDate>,
    pub due: Option<NaiveDate>,
}

impl FlagDates {
    /// The first day on which the flag is no longer visible; `None` while it has no end.
    pub fn hidden_from(&self) -> Option<NaiveDate> {
        let (anchor, window) = match self.flag_type {
            FlagType::Cpp | FlagType::Lac => (self.end?, ENDED_PLAN_WINDOW),
            // A UCPP always has a due date once accepted; without one only its end bounds it.
            FlagType::Ucpp => {
                let anchor = match (self.due, self.end) {
                    (Some(due), Some(end)) => due.min(end),
                    (Some(d), None) | (None, Some(d)) => d,
                    (None, None) => return None,
                };
                (anchor, UNBORN_PLAN_WINDOW)
            }
        };
        // Past chrono's calendar the window never closes in practice.
        anchor.checked_add_days(window)
    }

    /// Visible from the start date while today is before the end of its window.
    pub fn is_visible(&self, today: NaiveDate) -> bool {
        today >= self.start && self.hidden_from().is_none_or(|bound| today < bound)
    }

    /// Visible and not ended: no end date, or today before it.
    pub fn is_active(&self, today: NaiveDate) -> bool {
        self.is_visible(today) && self.end.is_none_or(|end| today < end)
    }
}

/// An uploaded record that passed every rule that needs no database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRecord {
    pub nhs_number: NhsNumber,
    pub dates: FlagDates,
    pub emergency_phone: String,
    pub office_hours_phone: String,
    pub email: String,
}

/// Why a record is refused: its code and a short fixed text naming the field, for people.
/// The text is static so that it can never carry (or grow with) what was sent: a report of
/// 50,000 refused records must still fit a stock client's 4 MiB (`crate::report`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordProblem {
    pub code: RecordCode,
    pub message: &'static str,
}

impl RecordProblem {
    fn new(code: RecordCode, message: &'static str) -> Self {
        RecordProblem { code, message }
    }

    pub fn sensitive() -> Self {
        RecordProblem::new(RecordCode::SensitiveRecord, "nhs_number: sensitive record")
    }

    pub fn too_many_episodes() -> Self {
        RecordProblem::new(
            RecordCode::TooManyEpisodes,
            "start_date: over 10 live episodes of this type",
        )
    }
}

/// The string fields of a `FlagRecord`, for the checks every one of them gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    NhsNumber,
    StartDate,
    EndDate,
    DueDate,
    EmergencyPhone,
    OfficeHoursPhone,
    Email,
}

impl Field {
    const ALL: [Field; 7] = [
        Field::NhsNumber,
        Field::StartDate,
        Field::EndDate,
        Field::DueDate,
        Field::EmergencyPhone,
        Field::OfficeHoursPhone,
        Field::Email,
    ];

    fn of(self, record: &FlagRecord) -> &str {
        match self {
            Field::NhsNumber => &record.nhs_number,
            Field::StartDate => &record.start_date,
            Field::EndDate => &record.end_date,
            Field::DueDate => &record.due_date,
            Field::EmergencyPhone => &record.emergency_phone,
            Field::OfficeHoursPhone => &record.office_hours_phone,
            Field::Email => &record.email,
        }
    }

    fn of_mut(self, record: &mut FlagRecord) -> &mut String {
        match self {
            Field::NhsNumber => &mut record.nhs_number,
            Field::StartDate => &mut record.start_date,
            Field::EndDate => &mut record.end_date,
            Field::DueDate => &mut record.due_date,
            Field::EmergencyPhone => &mut record.emergency_phone,
            Field::OfficeHoursPhone => &mut record.office_hours_phone,
            Field::Email => &mut record.email,
        }
    }

    /// The field's maximum (types.proto states it), and the code a longer value gets.
    fn maximum(self) -> (usize, RecordCode) {
        match self {
            Field::NhsNumber => (MAX_RECORD_NHS_NUMBER_BYTES, RecordCode::InvalidNhsNumber),
            Field::StartDate | Field::EndDate | Field::DueDate => {
                (MAX_RECORD_DATE_BYTES, RecordCode::InvalidDates)
            }
            Field::EmergencyPhone | Field::OfficeHoursPhone => {
                (MAX_RECORD_PHONE_BYTES, RecordCode::InvalidField)
            }
            Field::Email => (MAX_RECORD_EMAIL_BYTES, RecordCode::InvalidField),
        }
    }

    fn control_character(self) -> &'static str {
        match self {
            Field::NhsNumber => "nhs_number: control character",
            Field::StartDate => "start_date: control character",
            Field::EndDate => "end_date: control character",
            Field::DueDate => "due_date: control character",
            Field::EmergencyPhone => "emergency_phone: control character",
            Field::OfficeHoursPhone => "office_hours_phone: control character",
            Field::Email => "email: control character",
        }
    }

    fn too_long(self) -> &'static str {
        match self {
            Field::NhsNumber => "nhs_number: over 32 bytes",
            Field::StartDate => "start_date: over 10 bytes",
            Field::EndDate => "end_date: over 10 bytes",
            Field::DueDate => "due_date: over 10 bytes",
            Field::EmergencyPhone => "emergency_phone: over 32 bytes",
            Field::OfficeHoursPhone => "office_hours_phone: over 32 bytes",
            Field::Email => "email: over 254 bytes",
        }
    }

    /// Why a date field's value is not a date (only the three date fields have one).
    fn bad_date(self, error: &DateError) -> &'static str {
        match (self, error) {
            (Field::StartDate, DateError::Malformed) => "start_date: not YYYY-MM-DD",
            (Field::StartDate, DateError::Impossible) => "start_date: not a calendar date",
            (Field::EndDate, DateError::Malformed) => "end_date: not YYYY-MM-DD",
            (Field::EndDate, DateError::Impossible) => "end_date: not a calendar date",
            (_, DateError::Malformed) => "due_date: not YYYY-MM-DD",
            (_, DateError::Impossible) => "due_date: not a calendar date",
        }
    }
}

/// A control character (NUL, ESC, a newline...) in any field, whatever the field: it would
/// otherwise reach logs, terminals and, in a refused record's echo, the LA's own tools; and
/// PostgreSQL refuses NUL in text. Then each field's maximum. Checked before anything else,
/// so no rule below ever reads an oversized or poisoned value.
fn screen(record: &FlagRecord) -> Result<(), RecordProblem> {
    if let Some(field) = Field::ALL
        .into_iter()
        .find(|f| f.of(record).chars().any(char::is_control))
    {
        return Err(RecordProblem::new(
            RecordCode::InvalidField,
            field.control_character(),
        ));
    }
    for field in Field::ALL {
        let (max, code) = field.maximum();
        if field.of(record).len() > max {
            return Err(RecordProblem::new(code, field.too_long()));
        }
    }
    Ok(())
}

/// Bytes a staged record takes at most: a record within its maxima as it is
/// (`MAX_FLAG_RECORD_BYTES`), and each of its seven string fields over its maximum reduced to
/// at most 5 bytes more (see [`for_staging`]).
pub const MAX_STAGED_RECORD_BYTES: usize = MAX_FLAG_RECORD_BYTES + 7 * 5;

/// The record as staged: itself when every field is within its maximum; otherwise each field
/// over its maximum cut to a prefix still over it (and still holding a control character if
/// it held one), so that [`judge_record`] decides the same code and message, and the report
/// echoes the same NHS number (its first 16 bytes). Such a record is refused whatever else it
/// holds; kept whole, 50,000 records of up to 2 MiB each would be staged, and each chunk of
/// the apply would hold a thousand of them in memory.
pub fn for_staging(mut record: FlagRecord) -> FlagRecord {
    for field in Field::ALL {
        let max = field.maximum().0;
        let value = field.of_mut(&mut record);
        if value.len() <= max {
            continue;
        }
        let poisoned = value.chars().any(char::is_control);
        // A prefix of more than `max` bytes: a character boundary is at most 3 bytes back.
        let kept = crate::report::cap(value, max + 4).len();
        value.truncate(kept);
        if poisoned && !value.chars().any(char::is_control) {
            value.push('\0');
        }
    }
    record
}

/// Judges one record on its own. A control character anywhere decides first
/// (RECORD_CODE_INVALID_FIELD), then a field over its maximum; otherwise the first problem found
/// decides the code, in the order NHS number, flag type, dates, contact fields.
pub fn judge_record(record: &FlagRecord) -> Result<ValidRecord, RecordProblem> {
    screen(record)?;
    let nhs_number = NhsNumber::parse(&record.nhs_number).map_err(|e| {
        RecordProblem::new(
            RecordCode::InvalidNhsNumber,
            match e {
                NhsNumberError::Empty => "nhs_number: is required",
                NhsNumberError::NotTenDigits => "nhs_number: not 10 digits",
                NhsNumberError::CheckDigit => "nhs_number: wrong check digit",
            },
        )
    })?;
    let flag_type = FlagType::from_wire(record.flag_type).ok_or_else(|| {
        RecordProblem::new(RecordCode::InvalidField, "flag_type: not CPP, LAC or UCPP")
    })?;
    let dates = judge_dates(flag_type, record)?;
    let emergency_phone = record.emergency_phone.trim();
    if emergency_phone.is_empty() {
        return Err(RecordProblem::new(
            RecordCode::InvalidField,
            "emergency_phone: is required",
        ));
    }
    for (message, value) in [
        ("emergency_phone: not 10 to 15 digits", emergency_phone),
        (
            "office_hours_phone: not 10 to 15 digits",
            record.office_hours_phone.trim(),
        ),
    ] {
        if !value.is_empty() && !is_phone_number(value) {
            return Err(RecordProblem::new(RecordCode::InvalidField, message));
        }
    }
    let email = record.email.trim();
    if !email.is_empty() && !is_email(email) {
        return Err(RecordProblem::new(
            RecordCode::InvalidField,
            "email: not an address local@domain",
        ));
    }
    Ok(ValidRecord {
        nhs_number,
        dates,
        emergency_phone: emergency_phone.to_owned(),
        office_hours_phone: record.office_hours_phone.trim().to_owned(),
        email: email.to_owned(),
    })
}

fn judge_dates(flag_type: FlagType, record: &FlagRecord) -> Result<FlagDates, RecordProblem> {
    let invalid = |message| RecordProblem::new(RecordCode::InvalidDates, message);
    if record.start_date.is_empty() {
        return Err(invalid("start_date: is required"));
    }
    let start =
        parse_date(&record.start_date).map_err(|e| invalid(Field::StartDate.bad_date(&e)))?;
    let end =
        parse_optional_date(&record.end_date).map_err(|e| invalid(Field::EndDate.bad_date(&e)))?;
    let due =
        parse_optional_date(&record.due_date).map_err(|e| invalid(Field::DueDate.bad_date(&e)))?;
    if end.is_some_and(|end| end < start) {
        return Err(invalid("end_date: before start_date"));
    }
    match (flag_type, due) {
        (FlagType::Ucpp, None) => Err(invalid("due_date: required for UCPP")),
        (FlagType::Cpp | FlagType::Lac, Some(_)) => Err(invalid("due_date: only for UCPP")),
        _ => Ok(FlagDates {
            flag_type,
            start,
            end,
            due,
        }),
    }
}

/// Digits with optional spaces and one leading `+`, 10 to 15 digits.
pub fn is_phone_number(value: &str) -> bool {
    let body = value.strip_prefix('+').unwrap_or(value);
    let mut digits = 0;
    for c in body.chars() {
        match c {
            '0'..='9' => digits += 1,
            ' ' => {}
            _ => return false,
        }
    }
    (10..=15).contains(&digits)
}

/// `local@domain`: one `@`, a local part of printable characters without spaces, and a
/// domain of dot-separated labels (letters, digits, hyphens inside), at most 254 characters.
pub fn is_email(value: &str) -> bool {
    if value.len() > 254 {
        return false;
    }
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.chars().all(|c| {
            c.is_ascii_graphic()
                && !matches!(
                    c,
                    '@' | '"' | '(' | ')' | ',' | ';' | '<' | '>' | '[' | ']' | '\\'
                )
        })
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use chrono::{TimeZone, Utc};
    use platform::domain::england_date;
    use proptest::prelude::*;

    fn d(s: &str) -> NaiveDate {
        platform::domain::parse_date(s).unwrap()
    }

    fn dates(flag_type: FlagType, start: &str, end: &str, due: &str) -> FlagDates {
        FlagDates {
            flag_type,
            start: d(start),
            end: parse_optional_date(end).unwrap(),
            due: parse_optional_date(due).unwrap(),
        }
    }

    fn record(flag_type: FlagType, start: &str, end: &str, due: &str) -> FlagRecord {
        FlagRecord {
            nhs_number: "943 476 5919".into(),
            flag_type: flag_type.into(),
            start_date: start.into(),
            end_date: end.into(),
            due_date: due.into(),
            emergency_phone: "0161 234 5678".into(),
            office_hours_phone: String::new(),
            email: String::new(),
        }
    }

    #[test]
    fn cpp_is_visible_from_its_start_date_not_the_day_before() {
        let f = dates(FlagType::Cpp, "2025-03-10", "", "");
        assert!(!f.is_visible(d("2025-03-09")));
        assert!(f.is_visible(d("2025-03-10")));
        assert!(f.is_visible(d("2025-03-11")));
        assert!(f.is_active(d("2025-03-10")));
    }

    #[test]
    fn cpp_without_end_date_is_visible_and_active_for_ever() {
        let f = dates(FlagType::Cpp, "2020-01-01", "", "");
        assert!(f.is_visible(d("2262-01-01")));
        assert!(f.is_active(d("2262-01-01")));
    }

    #[test]
    fn ended_cpp_and_lac_stay_visible_until_end_plus_365_days() {
        for flag_type in [FlagType::Cpp, FlagType::Lac] {
            // 2024 is a leap year: 2024-03-01 + 365 days is 2025-03-01.
            let f = dates(flag_type, "2023-01-01", "2024-03-01", "");
            assert!(f.is_visible(d("2025-02-28")), "{flag_type}: day before");
            assert!(!f.is_visible(d("2025-03-01")), "{flag_type}: day of");
            assert!(!f.is_visible(d("2025-03-02")), "{flag_type}: day after");
        }
    }

    #[test]
    fn a_flag_is_active_until_the_day_before_its_end_date() {
        let f = dates(FlagType::Lac, "2024-01-01", "2024-06-15", "");
        assert!(f.is_active(d("2024-06-14")));
        assert!(!f.is_active(d("2024-06-15")));
        assert!(f.is_visible(d("2024-06-15")), "shown as ended");
        assert!(!f.is_active(d("2024-06-16")));
    }

    #[test]
    fn ucpp_stays_visible_until_due_date_plus_28_days() {
        let f = dates(FlagType::Ucpp, "2025-01-01", "", "2025-06-10");
        assert!(f.is_visible(d("2025-07-07")));
        assert!(!f.is_visible(d("2025-07-08")));
        assert!(!f.is_visible(d("2025-07-09")));
        // No end date: active while visible, even past the due date.
        assert!(f.is_active(d("2025-07-07")));
    }

    #[test]
    fn ucpp_ended_before_its_due_date_uses_the_end_date() {
        let f = dates(FlagType::Ucpp, "2025-01-01", "2025-03-01", "2025-06-10");
        assert!(f.is_visible(d("2025-03-28")));
        assert!(!f.is_visible(d("2025-03-29")));
        assert!(!f.is_active(d("2025-03-01")));
        assert!(f.is_active(d("2025-02-28")));
        // Ended after the due date: the due date bounds it.
        let g = dates(FlagType::Ucpp, "2025-01-01", "2025-08-01", "2025-06-10");
        assert!(g.is_visible(d("2025-07-07")));
        assert!(!g.is_visible(d("2025-07-08")));
    }

    #[test]
    fn today_is_the_england_date_across_the_bst_boundary() {
        // A CPP ended 2024-03-31: hidden from 2025-03-31. BST starts 2025-03-30 01:00 UTC.
        let f = dates(FlagType::Cpp, "2024-01-01", "2024-03-31", "");
        // 2025-03-30 23:30 UTC is 00:30 BST on 2025-03-31: already hidden in England.
        let late = Utc.with_ymd_and_hms(2025, 3, 30, 23, 30, 0).unwrap();
        assert_eq!(england_date(late), d("2025-03-31"));
        assert!(!f.is_visible(england_date(late)));
        // 22:59:59 UTC is 23:59:59 BST on 2025-03-30: still visible.
        let before = Utc.with_ymd_and_hms(2025, 3, 30, 22, 59, 59).unwrap();
        assert!(f.is_visible(england_date(before)));
        // In winter (GMT) midnight UTC is midnight in London.
        let g = dates(FlagType::Cpp, "2024-11-01", "", "");
        let winter_eve = Utc.with_ymd_and_hms(2024, 10, 31, 23, 59, 59).unwrap();
        assert!(!g.is_visible(england_date(winter_eve)));
        let winter_day = Utc.with_ymd_and_hms(2024, 11, 1, 0, 0, 0).unwrap();
        assert!(g.is_visible(england_date(winter_day)));
        // At the end of BST (2024-10-27 01:00 UTC) 00:30 UTC is still 01:30 BST that day.
        let h = dates(FlagType::Cpp, "2024-10-27", "", "");
        let bst_end = Utc.with_ymd_and_hms(2024, 10, 26, 23, 30, 0).unwrap();
        assert!(h.is_visible(england_date(bst_end)));
        let just_before = Utc.with_ymd_and_hms(2024, 10, 26, 22, 59, 59).unwrap();
        assert!(!h.is_visible(england_date(just_before)));
    }

    #[test]
    fn accepts_a_well_formed_record_and_normalises_its_number() {
        let valid = judge_record(&record(FlagType::Cpp, "2025-01-01", "", "")).unwrap();
        assert_eq!(valid.nhs_number.as_str(), "9434765919");
        let ucpp = judge_record(&record(FlagType::Ucpp, "2025-01-01", "", "2025-09-01"));
        assert!(ucpp.is_ok());
    }

    #[test]
    fn record_codes_follow_the_contract() {
        let code = |r: FlagRecord| judge_record(&r).unwrap_err().code;
        let mut bad_number = record(FlagType::Cpp, "2025-01-01", "", "");
        bad_number.nhs_number = "9876544321".into();
        assert_eq!(code(bad_number), RecordCode::InvalidNhsNumber);
        let mut unspecified = record(FlagType::Cpp, "2025-01-01", "", "");
        unspecified.flag_type = 0;
        assert_eq!(code(unspecified), RecordCode::InvalidField);
        for (t, start, end, due) in [
            (FlagType::Cpp, "2025-02-30", "", ""),
            (FlagType::Cpp, "", "", ""),
            (FlagType::Cpp, "01/02/2025", "", ""),
            (FlagType::Cpp, "2025-01-02", "2025-01-01", ""),
            (FlagType::Cpp, "2025-01-02", "2025-13-01", ""),
            (FlagType::Ucpp, "2025-01-02", "", ""),
            (FlagType::Lac, "2025-01-02", "", "2025-05-01"),
            (FlagType::Cpp, "2025-01-02", "", "2025-05-01"),
        ] {
            assert_eq!(
                code(record(t, start, end, due)),
                RecordCode::InvalidDates,
                "{t} {start} {end} {due}"
            );
        }
        // An end date equal to the start date is allowed.
        assert!(judge_record(&record(FlagType::Cpp, "2025-01-02", "2025-01-02", "")).is_ok());
        let mut no_phone = record(FlagType::Cpp, "2025-01-01", "", "");
        no_phone.emergency_phone = "  ".into();
        let problem = judge_record(&no_phone).unwrap_err();
        assert_eq!(problem.code, RecordCode::InvalidField);
        assert!(problem.message.starts_with("emergency_phone"));
        let mut bad_office = record(FlagType::Cpp, "2025-01-01", "", "");
        bad_office.office_hours_phone = "0161-234-5678".into();
        let problem = judge_record(&bad_office).unwrap_err();
        assert!(problem.message.starts_with("office_hours_phone"));
        let mut bad_email = record(FlagType::Cpp, "2025-01-01", "", "");
        bad_email.email = "duty team@council".into();
        let problem = judge_record(&bad_email).unwrap_err();
        assert_eq!(problem.code, RecordCode::InvalidField);
        assert!(problem.message.starts_with("email"));
    }

    #[test]
    fn phone_numbers_are_10_to_15_digits_with_spaces_and_one_leading_plus() {
        for ok in [
            "0161 234 5678",
            "+44 161 234 5678",
            "01612345678",
            "123456789012345",
        ] {
            assert!(is_phone_number(ok), "{ok}");
        }
        for bad in [
            "016 123 456",
            "1234567890123456",
            "++441612345678",
            "44+1612345678",
            "0161-234-5678",
            "(0161) 2345678",
            "",
        ] {
            assert!(!is_phone_number(bad), "{bad}");
        }
    }

    #[test]
    fn emails_are_local_at_domain() {
        for ok in ["duty@council.gov.uk", "a.b+c@x-y.example"] {
            assert!(is_email(ok), "{ok}");
        }
        let long = format!("{}@{}.uk", "a".repeat(60), "b".repeat(200));
        for bad in [
            "duty",
            "@council.gov.uk",
            "duty@",
            "duty@council",
            "du ty@council.gov.uk",
            "a@b@c.uk",
            "duty@-council.uk",
            "duty@council..uk",
            long.as_str(),
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    /// A valid record with every string field set.
    fn full_record() -> FlagRecord {
        let mut r = record(FlagType::Ucpp, "2025-01-01", "2025-02-01", "2025-09-01");
        r.office_hours_phone = "0161 234 0000".into();
        r.email = "duty@council.example".into();
        r
    }

    /// [`full_record`] with the given field set to `value`.
    fn with_field(field: Field, value: &str) -> FlagRecord {
        let mut r = full_record();
        *field.of_mut(&mut r) = value.to_owned();
        r
    }

    fn field_name(field: Field) -> &'static str {
        match field {
            Field::NhsNumber => "nhs_number",
            Field::StartDate => "start_date",
            Field::EndDate => "end_date",
            Field::DueDate => "due_date",
            Field::EmergencyPhone => "emergency_phone",
            Field::OfficeHoursPhone => "office_hours_phone",
            Field::Email => "email",
        }
    }

    #[test]
    fn a_control_character_in_any_field_is_invalid_field_naming_it() {
        assert!(judge_record(&full_record()).is_ok());
        for field in Field::ALL {
            let value = field.of(&full_record()).to_owned();
            // NUL, ESC, a trailing newline (trimmed away and accepted before), DEL and C1 NEL.
            for poison in ["\0", "\u{1b}", "\n", "\u{7f}", "\u{85}"] {
                let r = with_field(field, &format!("{value}{poison}"));
                let problem = judge_record(&r).unwrap_err();
                assert_eq!(
                    problem.code,
                    RecordCode::InvalidField,
                    "{field:?} {poison:?}"
                );
                assert!(
                    problem.message.starts_with(field_name(field)),
                    "{field:?}: {}",
                    problem.message
                );
            }
        }
        // Even where the field is otherwise wrong too: the control character decides.
        let mut bad_number = with_field(Field::NhsNumber, "123\0");
        bad_number.start_date = "soon".into();
        assert_eq!(
            judge_record(&bad_number).unwrap_err().code,
            RecordCode::InvalidField
        );
    }

    #[test]
    fn a_field_over_its_maximum_is_refused_naming_it_and_one_at_it_is_judged_as_usual() {
        let spaced_number = format!("{:<32}", "943 476 5919");
        let spaced_phone = format!("{:<32}", "+44 1 6 1 2 3 4 5 6 7 8");
        let email = format!(
            "{}@{}.{}.{}",
            "l".repeat(64),
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(61)
        );
        assert_eq!(email.len(), MAX_RECORD_EMAIL_BYTES);
        for (field, at_max) in [
            (Field::NhsNumber, spaced_number.as_str()),
            (Field::StartDate, "2025-01-01"),
            (Field::EndDate, "2025-02-01"),
            (Field::DueDate, "2025-09-01"),
            (Field::EmergencyPhone, spaced_phone.as_str()),
            (Field::OfficeHoursPhone, spaced_phone.as_str()),
            (Field::Email, email.as_str()),
        ] {
            let (max, code) = field.maximum();
            assert_eq!(at_max.len(), max, "{field:?}");
            assert!(
                judge_record(&with_field(field, at_max)).is_ok(),
                "{field:?}"
            );
            let over = with_field(field, &format!("{at_max} "));
            let problem = judge_record(&over).unwrap_err();
            assert_eq!(problem.code, code, "{field:?}");
            assert_eq!(problem.message, field.too_long());
            assert!(problem.message.starts_with(field_name(field)));
        }
        // The codes the contract gives: an NHS number's own, the dates', the other fields'.
        assert_eq!(Field::NhsNumber.maximum().1, RecordCode::InvalidNhsNumber);
        assert_eq!(Field::DueDate.maximum().1, RecordCode::InvalidDates);
        assert_eq!(Field::Email.maximum().1, RecordCode::InvalidField);
    }

    #[test]
    fn every_refusal_text_is_short_and_names_its_field() {
        use platform::requests::MAX_RESULT_MESSAGE_BYTES;
        let mut texts = vec![
            RecordProblem::sensitive().message,
            RecordProblem::too_many_episodes().message,
        ];
        for field in Field::ALL {
            texts.extend([field.control_character(), field.too_long()]);
            for e in [DateError::Malformed, DateError::Impossible] {
                texts.push(field.bad_date(&e));
            }
        }
        for text in texts {
            assert!(text.len() <= MAX_RESULT_MESSAGE_BYTES, "{text}");
            assert!(text.contains(": "), "{text}");
        }
        assert!(
            RecordProblem::too_many_episodes()
                .message
                .contains(&crate::storage::uploads::MAX_EPISODES.to_string())
        );
    }

    fn any_flag() -> impl Strategy<Value = FlagDates> {
        (
            0u8..3,
            0u64..20_000,
            proptest::option::of(0u64..2_000),
            0u64..2_000,
        )
            .prop_map(|(t, start, end, due)| {
                let base = d("2000-01-01");
                let start = base + Days::new(start);
                let flag_type = [FlagType::Cpp, FlagType::Lac, FlagType::Ucpp][t as usize];
                FlagDates {
                    flag_type,
                    start,
                    end: end.map(|e| start + Days::new(e)),
                    due: (flag_type == FlagType::Ucpp).then(|| start + Days::new(due)),
                }
            })
    }

    proptest! {
        #[test]
        fn active_implies_visible(f in any_flag(), offset in 0u64..25_000) {
            let today = d("2000-01-01") + Days::new(offset);
            prop_assert!(!f.is_active(today) || f.is_visible(today));
        }

        #[test]
        fn visibility_is_one_interval_from_the_start_date(f in any_flag(), offset in 0u64..25_000) {
            let today = d("2000-01-01") + Days::new(offset);
            let expected = today >= f.start && f.hidden_from().is_none_or(|b| today < b);
            prop_assert_eq!(f.is_visible(today), expected);
            // Once hidden, hidden every later day.
            if today >= f.start && !f.is_visible(today) {
                prop_assert!(!f.is_visible(today + Days::new(1)));
            }
        }

        #[test]
        fn cpp_and_lac_windows_are_365_days_after_the_end(f in any_flag()) {
            if let (FlagType::Cpp | FlagType::Lac, Some(end)) = (f.flag_type, f.end) {
                let last = end + Days::new(364);
                prop_assert_eq!(f.is_visible(last), last >= f.start);
                prop_assert!(!f.is_visible(end + Days::new(365)));
            }
        }

        #[test]
        fn judging_arbitrary_records_never_panics(
            nhs in ".{0,14}", t in -1i32..5, start in ".{0,12}", end in ".{0,12}",
            due in ".{0,12}", phone in ".{0,20}", email in ".{0,30}",
        ) {
            let r = FlagRecord {
                nhs_number: nhs, flag_type: t, start_date: start, end_date: end, due_date: due,
                emergency_phone: phone, office_hours_phone: String::new(), email,
            };
            if let Err(p) = judge_record(&r) {
                prop_assert!(p.code != RecordCode::Accepted && p.code != RecordCode::Unspecified);
                prop_assert!(!p.message.is_empty());
            }
        }

        #[test]
        fn every_refusal_is_a_short_fixed_text_naming_a_field(
            nhs in "[0-9 ]{0,40}|.{0,40}", t in -1i32..5, start in ".{0,14}", end in ".{0,14}",
            due in ".{0,14}", phone in "[0-9 +]{0,40}|.{0,40}", office in ".{0,40}",
            email in ".{0,300}",
        ) {
            let r = FlagRecord {
                nhs_number: nhs, flag_type: t, start_date: start, end_date: end, due_date: due,
                emergency_phone: phone, office_hours_phone: office, email,
            };
            if let Err(p) = judge_record(&r) {
                prop_assert!(p.message.len() <= platform::requests::MAX_RESULT_MESSAGE_BYTES);
                let field = p.message.split(": ").next().unwrap_or_default();
                prop_assert!(
                    Field::ALL.iter().any(|f| field_name(*f) == field) || field == "flag_type",
                    "{}", p.message
                );
            }
        }

        #[test]
        fn a_control_character_anywhere_refuses_the_record_as_invalid_field(
            which in 0usize..7, at in any::<prop::sample::Index>(),
            poison in prop::char::range('\0', '\u{1f}').prop_union(prop::char::range('\u{7f}', '\u{9f}')),
        ) {
            let field = Field::ALL[which];
            let mut value: Vec<char> = field.of(&full_record()).chars().collect();
            let position = at.index(value.len() + 1);
            value.insert(position, poison);
            let r = with_field(field, &value.into_iter().collect::<String>());
            let problem = judge_record(&r).unwrap_err();
            prop_assert_eq!(problem.code, RecordCode::InvalidField);
            prop_assert_eq!(problem.message, field.control_character());
        }

        /// Staged reduced, a record is judged and echoed exactly as sent, and weighs little.
        #[test]
        fn a_record_reduced_for_staging_is_judged_and_echoed_as_the_record_sent(
            values in proptest::collection::vec(
                prop_oneof![
                    Just(None),
                    "[0-9 ]{0,400}".prop_map(Some),
                    ".{0,300}".prop_map(Some),
                    ("[ -~]{0,300}", prop::char::range('\0', '\u{9f}'), "[^\u{0}-\u{1f}]{0,300}")
                        .prop_map(|(a, c, b)| Some(format!("{a}{c}{b}"))),
                ],
                7,
            ),
            flag_type in -1i32..5,
        ) {
            use prost::Message;
            let mut r = full_record();
            r.flag_type = flag_type;
            for (field, value) in Field::ALL.into_iter().zip(values) {
                if let Some(v) = value {
                    *field.of_mut(&mut r) = v;
                }
            }
            let staged = for_staging(r.clone());
            prop_assert_eq!(judge_record(&staged), judge_record(&r));
            let echo = |x: &FlagRecord| {
                crate::report::cap(&x.nhs_number, platform::requests::MAX_RESULT_NHS_NUMBER_BYTES)
                    .to_owned()
            };
            prop_assert_eq!(echo(&staged), echo(&r));
            prop_assert!(staged.encoded_len() <= MAX_STAGED_RECORD_BYTES, "{}", staged.encoded_len());
            if Field::ALL.iter().all(|f| f.of(&r).len() <= f.maximum().0) {
                prop_assert_eq!(&staged, &r, "within its maxima, staged as sent");
            }
        }

        #[test]
        fn valid_phone_shapes_are_accepted(digits in "[0-9]{10,15}", plus in any::<bool>()) {
            let spaced: String = digits.chars().enumerate()
                .flat_map(|(i, c)| if i % 4 == 3 { vec![c, ' '] } else { vec![c] })
                .collect();
            let value = if plus { format!("+{spaced}") } else { spaced };
            prop_assert!(is_phone_number(value.trim()));
        }
    }
}
