//! What access-service keeps besides the audit log: organisations, systems and obligations.

pub mod obligations;
pub mod organisations;
pub mod systems;

/// Now, as stored: microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
