//! access-service's own failures, converted once into the platform's one error type.

use platform::Error;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("no system has that SAN")]
    SystemNotFound,
    #[error("no obligation has that lookup_id")]
    ObligationNotFound,
    #[error("that obligation was already carried out")]
    ObligationCompleted,
    #[error("request_id was already used with a different request")]
    RequestIdReused,
    #[error("audit signing key: {0}")]
    SigningKey(String),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
}

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::SystemNotFound | AccessError::ObligationNotFound => {
                Error::NotFound(e.to_string())
            }
            AccessError::ObligationCompleted => Error::FailedPrecondition(e.to_string()),
            AccessError::RequestIdReused => Error::invalid("request_id", e.to_string()),
            AccessError::SigningKey(_) => Error::FailedPrecondition(e.to_string()),
            AccessError::Corrupt(text) => Error::Internal(text),
            AccessError::Database(db) => db.into(),
        }
    }
}

/// The same failure for each waiter of a batch (platform's error is not `Clone`).
pub fn for_each_waiter(e: &Error) -> Error {
    match e {
        Error::Unavailable {
            dependency,
            retry_after,
        } => Error::Unavailable {
            dependency: dependency.clone(),
            retry_after: *retry_after,
        },
        other => Error::Internal(other.to_string()),
    }
}
