//! `Decide`: validate the request ([`request`]), then hand it to this process's one writer
//! task ([`writer`]), which decides and audits concurrent requests in batches, one
//! transaction per batch ([`batch`]).

pub mod batch;
pub mod request;
pub mod writer;

pub use writer::AccessDecisions;
