//! The access-service tables as sea-orm entities.
//!
//! Instants are stored as microseconds since the Unix epoch (BIGINT): the same bytes on SQLite
//! and PostgreSQL, ordered numerically, and exactly what the audit hash covers, so a record
//! read back hashes as it was written.

pub mod audit_head;
pub mod audit_record;
pub mod idempotency_key;
pub mod obligation;
pub mod organisation;
pub mod system;
