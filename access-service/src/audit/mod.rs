//! The hash-chained audit log: how a record is hashed ([`chain`]), read back ([`list`]),
//! checked ([`verify`]) and its head signed ([`checkpoint`]). Appending is the decision
//! writer's job (`crate::decide`).

pub mod chain;
pub mod checkpoint;
pub mod list;
pub mod verify;
