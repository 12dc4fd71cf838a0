//! The pure vocabulary of child protection information sharing: NHS numbers (Modulus 11),
//! ODS codes, calendar dates in England, flag and setting types, access and organisation
//! kinds, activities and the stable reasons of a refusal.
//!
//! No I/O and no wire types: `platform` re-exports all of it (with the proto conversions) for
//! the services, and the fuzz targets use it alone, so it stays small and quick to build.

mod dates;
mod kinds;
mod nhs_number;
mod ods_code;

pub use dates::{DateError, england_date, format_optional_date, parse_date, parse_optional_date};
pub use kinds::{AccessKind, Activity, DenyReason, FlagType, OrganisationKind, SettingType};
pub use nhs_number::{NhsNumber, NhsNumberError};
pub use ods_code::{OdsCode, OdsCodeError};
