//! The sea-orm entities of attendance-service.

pub mod attendance;
