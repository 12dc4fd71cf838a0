//! `Decide`: validate the request ([`request`]), then hand it to this process's one writer
//! task ([`writer`]), which decides and audits concurrent requests in batches, one
//! transaction per batch ([`batch`]): load what the batch needs, decide it with the pure
//! [`plan`], write the result.

pub mod batch;
pub mod plan;
pub mod request;
pub mod writer;

pub use request::DEFAULT_MIN_ASSURANCE_LEVEL;
pub use writer::AccessDecisions;
