//! The registry's value types, shared by requests and storage (neither imports the other): a
//! flag as lookups see it (what the cache holds per NHS number and what answers are built
//! from), the key naming one, and who a change or a notifying read is made by. Visibility and
//! `active` are computed at each instant, never stored.

use crate::entities::flag as flag_row;
use crate::rules::FlagDates;
use chrono::{DateTime, NaiveDate, Utc};
use cpis_proto::gateway;
use platform::domain::{
    FlagType, NhsNumber, SettingType, format_optional_date, parse_date, parse_optional_date,
};

/// A flag as EndFlag and DeleteFlag name it, typed at the edge by the validator the gateway
/// shares.
pub use platform::requests::FlagKey;

/// Who looked a child up, for the ACCESS notifications of a notifying read.
#[derive(Clone, Debug)]
pub struct Access {
    pub lookup_id: String,
    pub user_id: String,
    pub role_code: String,
    pub site_ods_code: String,
    pub organisation_name: String,
    pub setting_type: Option<SettingType>,
    pub accessed_at: DateTime<Utc>,
}

/// The administrator making a change, as the notifications name them.
#[derive(Clone, Debug)]
pub struct Administrator {
    pub user_id: String,
    pub role_code: String,
    pub ods_code: String,
    pub organisation_name: String,
}

/// The flags among `flags` (every live flag on a number) visible on `today`: what a lookup is
/// answered with, and the flags whose LAs an event on the number notifies.
pub fn visible(flags: &[Flag], today: NaiveDate) -> impl Iterator<Item = &Flag> {
    flags.iter().filter(move |f| f.dates.is_visible(today))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub la_ods_code: String,
    pub la_name: String,
    pub nhs_number: NhsNumber,
    pub dates: FlagDates,
    pub emergency_phone: String,
    pub office_hours_phone: String,
    pub email: String,
}

impl Flag {
    /// `None` for a row whose type or number is not one we know (never written by this
    /// service).
    pub fn from_row(row: &flag_row::Model) -> Option<Flag> {
        Some(Flag {
            la_ods_code: row.la_ods_code.clone(),
            la_name: row.la_name.clone(),
            nhs_number: NhsNumber::parse(&row.nhs_number).ok()?,
            dates: FlagDates {
                flag_type: FlagType::parse(&row.flag_type)?,
                start: row.start_date,
                end: row.end_date,
                due: row.due_date,
            },
            emergency_phone: row.emergency_phone.clone(),
            office_hours_phone: row.office_hours_phone.clone(),
            email: row.email.clone(),
        })
    }

    /// The wire form, with `active` as of `today`.
    pub fn to_proto(&self, today: NaiveDate) -> gateway::Flag {
        gateway::Flag {
            nhs_number: self.nhs_number.as_str().to_owned(),
            flag_type: self.dates.flag_type.into(),
            start_date: format_optional_date(Some(self.dates.start)),
            end_date: format_optional_date(self.dates.end),
            due_date: format_optional_date(self.dates.due),
            active: self.dates.is_active(today),
            local_authority: Some(gateway::LocalAuthorityContact {
                ods_code: self.la_ods_code.clone(),
                name: self.la_name.clone(),
                emergency_phone: self.emergency_phone.clone(),
                office_hours_phone: self.office_hours_phone.clone(),
                email: self.email.clone(),
            }),
        }
    }

    /// Back from the wire form (the shared cache stores flags so); `None` when malformed.
    pub fn from_proto(flag: &gateway::Flag) -> Option<Flag> {
        let la = flag.local_authority.as_ref()?;
        Some(Flag {
            la_ods_code: la.ods_code.clone(),
            la_name: la.name.clone(),
            nhs_number: NhsNumber::parse(&flag.nhs_number).ok()?,
            dates: FlagDates {
                flag_type: FlagType::from_wire(flag.flag_type)?,
                start: parse_date(&flag.start_date).ok()?,
                end: parse_optional_date(&flag.end_date).ok()?,
                due: parse_optional_date(&flag.due_date).ok()?,
            },
            emergency_phone: la.emergency_phone.clone(),
            office_hours_phone: la.office_hours_phone.clone(),
            email: la.email.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wire_form_round_trips() {
        let flag = Flag {
            la_ods_code: "706".into(),
            la_name: "Example Council".into(),
            nhs_number: NhsNumber::parse("9434765919").unwrap(),
            dates: FlagDates {
                flag_type: FlagType::Ucpp,
                start: parse_date("2025-01-01").unwrap(),
                end: None,
                due: Some(parse_date("2025-08-01").unwrap()),
            },
            emergency_phone: "0161 234 5678".into(),
            office_hours_phone: String::new(),
            email: "duty@example.gov.uk".into(),
        };
        let wire = flag.to_proto(parse_date("2025-02-01").unwrap());
        assert!(wire.active);
        assert_eq!(Flag::from_proto(&wire), Some(flag));
    }
}
