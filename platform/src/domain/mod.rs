//! Validated domain types. Everything that enters from the wire is parsed into one of these
//! first; a failure becomes a `google.rpc.BadRequest` field violation (see [`crate::error`]).

mod dates;
mod kinds;
mod nhs_number;
mod ods_code;

pub use dates::{
    DateError, england_date, format_optional_date, from_timestamp, parse_date, parse_optional_date,
    to_timestamp,
};
pub use kinds::{AccessKind, Activity, DenyReason, FlagType, SettingType};
pub use nhs_number::{NhsNumber, NhsNumberError};
pub use ods_code::{OdsCode, OdsCodeError};
