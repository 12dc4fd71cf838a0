//! The registry's tables as sea-orm entities; the schema itself is made by `crate::migration`.

pub mod flag;
pub mod flag_history;
pub mod inactive_number;
pub mod notification;
pub mod outbox;
pub mod restriction;
pub mod upload;
pub mod upload_attempt;
pub mod upload_staging;
