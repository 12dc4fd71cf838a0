//! The `cpis` command line: `cpis dev` runs the whole system in one process on its embedded
//! default; `cpis token` mints development tokens; every other subcommand calls a gateway's
//! public API as a clinician, a local authority, an auditor or an administrator would, and
//! says what went wrong in words (`failure`), with an exit status scripts can act on.

pub mod admin;
pub mod audit;
pub mod connect;
pub mod demo;
pub mod dev;
pub mod devkeys;
pub mod failure;
pub mod flags;
pub mod json;
pub mod lookup;
pub mod notifications;
pub mod pages;
pub mod token;
pub mod upload;
pub mod upload_csv;
