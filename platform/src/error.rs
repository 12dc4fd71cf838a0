//! The one error type of cpis and the one place it becomes a `tonic::Status`.
//!
//! Each service keeps its own error enum and converts it into [`Error`]; only this module
//! knows gRPC codes and `google.rpc` details (AIP-193). Internal faults never reach a caller
//! as raw text: they are logged here with a reference the caller is given instead.

use crate::domain::{self, DenyReason, FlagType, NhsNumber, OdsCode, SettingType};
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every cpis refusal.
pub const ERROR_DOMAIN: &str = "cpis";

/// How long a client should wait before retrying an unavailable dependency.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One problem with one request field, named by its proto path (`setting.ods_code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: nothing was written.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A verified token that still names no caller; `reason` is the ErrorInfo reason (stable,
    /// machine-readable: which claim is wrong), `message` what a person reads.
    #[error("unauthenticated: {message}")]
    IdentityRefused {
        reason: &'static str,
        message: String,
    },
    /// Access refused by a decision; the reason is stable and machine-readable.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: DenyReason, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A dependency (database, cache, backend) cannot answer now; the caller may retry.
    #[error("{dependency} unavailable")]
    Unavailable {
        dependency: String,
        retry_after: Duration,
    },
    /// Load shed or a limit reached; `reason` is the ErrorInfo reason (stable,
    /// machine-readable), `message` what a person reads.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A bug or an unexpected fault; the text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// A status already shaped by another cpis service, passed through unchanged.
    #[error("{}", .0.message())]
    Upstream(Status),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    pub fn unavailable(dependency: impl Into<String>) -> Self {
        Error::Unavailable {
            dependency: dependency.into(),
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }

    pub fn internal(context: impl std::fmt::Display) -> Self {
        Error::Internal(context.to_string())
    }

    pub fn denied(reason: DenyReason) -> Self {
        let message = match reason {
            DenyReason::MissingActivity => {
                "the caller's role does not hold the activity this call needs"
            }
            DenyReason::InsufficientAssurance => {
                "the caller signed in at an authentication assurance level below what a lookup needs"
            }
            DenyReason::OrganisationNotOnboarded => {
                "the caller's organisation is not onboarded to cpis for this kind of call"
            }
            DenyReason::SettingNotInOrganisation => {
                "the setting is not part of the caller's organisation"
            }
        };
        Error::PermissionDenied {
            reason,
            message: message.to_owned(),
        }
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) | Error::IdentityRefused { .. } => Code::Unauthenticated,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::Internal(_) => Code::Internal,
            Error::Upstream(s) => s.code(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidArgument(violations) => {
                let message = format!("invalid request: {}", describe(&violations));
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::IdentityRefused { reason, message } => Status::with_error_details(
                Code::Unauthenticated,
                message,
                ErrorDetails::with_error_info(
                    reason,
                    ERROR_DOMAIN,
                    std::collections::HashMap::<String, String>::new(),
                ),
            ),
            Error::PermissionDenied { reason, message } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                ErrorDetails::with_error_info(
                    reason.as_str(),
                    ERROR_DOMAIN,
                    std::collections::HashMap::<String, String>::new(),
                ),
            ),
            Error::NotFound(message) => Status::not_found(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Unavailable {
                dependency,
                retry_after,
            } => Status::with_error_details(
                Code::Unavailable,
                format!("{dependency} is unavailable; retry later"),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            Error::ResourceExhausted { reason, message } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_error_info(
                    reason,
                    ERROR_DOMAIN,
                    std::collections::HashMap::<String, String>::new(),
                ),
            ),
            Error::DeadlineExceeded => {
                Status::deadline_exceeded("the deadline passed before an answer")
            }
            Error::Internal(text) => {
                let reference = uuid_like_reference();
                tracing::error!(reference = %reference, error = %text, "internal error");
                Status::internal(format!("internal error (reference {reference})"))
            }
            Error::Upstream(status) => status,
        }
    }
}

/// A short reference tying a caller's report to the log line, without revealing anything.
fn uuid_like_reference() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}-{:x}",
        now.as_millis(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        if database_unreachable(&e) {
            Error::unavailable("database")
        } else {
            Error::Internal(e.to_string())
        }
    }
}

/// Whether a database error means "the database could not answer now" (a retry may succeed)
/// rather than a fault in the statement: decided by the driver's error variants and, for a
/// server's own refusal, by its SQLSTATE, never by message text.
pub fn database_unreachable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::{DbErr, RuntimeErr};
    let runtime = match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(r) | DbErr::Query(r) => r,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx.as_ref() {
        Sqlx::Io(_)
        | Sqlx::Tls(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed => true,
        // PostgreSQL: class 08 (connection exception), 57P01-57P03 (shutting down, starting
        // up), 53300 (too many connections).
        Sqlx::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl From<sea_orm::TransactionError<Error>> for Error {
    fn from(e: sea_orm::TransactionError<Error>) -> Self {
        match e {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            Error::unavailable("cache")
        } else {
            Error::Internal(format!("redis: {e}"))
        }
    }
}

/// Collects every problem of a request before answering, so an integrator sees them all at
/// once. Each parser returns `None` on failure and records a violation for its field.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn nhs_number(&mut self, field: &str, value: &str) -> Option<NhsNumber> {
        NhsNumber::parse(value)
            .map_err(|e| self.add(field, e.to_string()))
            .ok()
    }

    pub fn ods_code(&mut self, field: &str, value: &str) -> Option<OdsCode> {
        OdsCode::parse(value)
            .map_err(|e| self.add(field, e.to_string()))
            .ok()
    }

    pub fn flag_type(&mut self, field: &str, value: i32) -> Option<FlagType> {
        let parsed = FlagType::from_wire(value);
        if parsed.is_none() {
            self.add(
                field,
                "must be FLAG_TYPE_CPP, FLAG_TYPE_LAC or FLAG_TYPE_UCPP",
            );
        }
        parsed
    }

    pub fn setting_type(&mut self, field: &str, value: i32) -> Option<SettingType> {
        let parsed = SettingType::from_wire(value);
        if parsed.is_none() {
            self.add(
                field,
                "must be one of the SETTING_TYPE_ values other than SETTING_TYPE_UNSPECIFIED",
            );
        }
        parsed
    }

    pub fn access_kind(&mut self, field: &str, value: i32) -> Option<domain::AccessKind> {
        let parsed = domain::AccessKind::from_wire(value);
        if parsed.is_none() {
            self.add(
                field,
                "must be ACCESS_KIND_UNSCHEDULED or ACCESS_KIND_SCHEDULED",
            );
        }
        parsed
    }

    pub fn date(&mut self, field: &str, value: &str) -> Option<chrono::NaiveDate> {
        domain::parse_date(value)
            .map_err(|e| self.add(field, e.to_string()))
            .ok()
    }

    /// `Some(None)` for an empty (absent) date, `None` when malformed.
    pub fn optional_date(&mut self, field: &str, value: &str) -> Option<Option<chrono::NaiveDate>> {
        domain::parse_optional_date(value)
            .map_err(|e| self.add(field, e.to_string()))
            .ok()
    }

    pub fn max_len(&mut self, field: &str, value: &str, max: usize) {
        if value.len() > max {
            self.add(field, format!("must be at most {max} bytes"));
        }
    }

    /// An identifier or free text: at most `max` bytes and no control character (NUL, ESC,
    /// newlines...), which would otherwise reach logs, terminals and database text columns
    /// (PostgreSQL refuses NUL in text, failing a whole batch of other callers' writes).
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        self.max_len(field, value, max);
        if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
    }

    /// A name people read: no control character, and none of the invisible formatting
    /// characters (bidirectional overrides and isolates, zero-width marks) that can make one
    /// name display as another.
    pub fn name(&mut self, field: &str, value: &str) {
        if value
            .chars()
            .any(|c| c.is_control() || is_invisible_format(c))
        {
            self.add(
                field,
                "must not contain control, bidirectional or invisible formatting characters",
            );
        }
    }

    /// `Ok` when nothing was wrong; otherwise every violation in one `INVALID_ARGUMENT`.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// Unicode format characters that change how text displays without being seen: the
/// bidirectional embeddings, overrides, isolates and marks, zero-width characters and the
/// byte-order mark.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
            | '\u{061C}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_names_refuse_what_would_poison_them() {
        let mut v = Violations::new();
        v.text("request_id", "abc-123", 128);
        v.name("name", "Ó Briain Council");
        assert!(v.is_empty());
        for bad in ["a\0b", "a\u{1b}[31mb", "line\nbreak"] {
            let mut v = Violations::new();
            v.text("request_id", bad, 128);
            assert!(!v.is_empty(), "{bad:?}");
        }
        for bad in ["Evil\u{202E}lioc", "a\u{200B}b", "ESC\u{1b}"] {
            let mut v = Violations::new();
            v.name("name", bad);
            assert!(!v.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_argument_carries_bad_request_field_violations() {
        let mut v = Violations::new();
        v.nhs_number("nhs_number", "123");
        v.setting_type("setting.setting_type", 0);
        let status: Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().expect("BadRequest");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["nhs_number", "setting.setting_type"]);
    }

    #[test]
    fn permission_denied_carries_error_info_with_the_reason() {
        let status: Status = Error::denied(DenyReason::SettingNotInOrganisation).into();
        assert_eq!(status.code(), Code::PermissionDenied);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "SETTING_NOT_IN_ORGANISATION");
        assert_eq!(info.domain, "cpis");
    }

    #[test]
    fn unavailable_carries_retry_info() {
        let status: Status = Error::unavailable("flag registry").into();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(DEFAULT_RETRY_AFTER)
        );
    }

    #[test]
    fn internal_errors_never_leak_their_text() {
        let status: Status =
            Error::internal("duplicate key value violates unique constraint \"secret\"").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        assert!(status.message().contains("reference"));
    }
}
