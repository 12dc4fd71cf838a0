//! What can go wrong in attendance-service beyond bad input, and how each becomes the one
//! platform error (which alone knows gRPC statuses).

use platform::Error;

#[derive(Debug, thiserror::Error)]
pub enum AttendanceError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A stored row this code cannot read back: only a bug or a hand edit can cause it.
    #[error("stored attendance {id} has an unknown setting type")]
    UnknownSettingType { id: String },
}

impl From<AttendanceError> for Error {
    fn from(e: AttendanceError) -> Self {
        match e {
            // Unreachable or overloaded databases become UNAVAILABLE there.
            AttendanceError::Database(db) => Error::from(db),
            other => Error::internal(other),
        }
    }
}
