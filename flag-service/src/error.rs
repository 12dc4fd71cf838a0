//! The registry's own failures, converted once into the platform error (and so to a status).

use platform::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Absent, deleted and another LA's flag answer alike, so nothing leaks between LAs.
    #[error("the local authority holds no such flag")]
    FlagNotFound,
    #[error("the NHS number is not restricted")]
    NotRestricted,
    #[error("this upload_id was already used by the local authority for different records")]
    UploadIdReused,
    /// The attempt's lease lapsed (its stream stalled past it) and cleanup took its staged
    /// records: nothing was applied, and the upload must be sent again.
    #[error("the upload's staged records were discarded after its lease lapsed")]
    StagingLapsed,
    #[error("is above the highest cursor assigned ({head})")]
    CursorBeyondHead { head: u64 },
    /// The write is committed but the shared cache did not confirm its invalidation.
    #[error("the change is stored but not yet visible everywhere")]
    CacheNotInvalidated,
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::FlagNotFound => Error::NotFound(e.to_string()),
            RegistryError::NotRestricted => Error::NotFound(e.to_string()),
            RegistryError::UploadIdReused => Error::invalid("upload_id", e.to_string()),
            RegistryError::StagingLapsed => Error::unavailable("upload staging"),
            RegistryError::CursorBeyondHead { .. } => Error::invalid("up_to_cursor", e.to_string()),
            RegistryError::CacheNotInvalidated => Error::unavailable("flag cache"),
            RegistryError::Corrupt(text) => Error::Internal(text),
            RegistryError::Database(db) => db.into(),
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
