//! An AIP-155 `request_id` seen with an allowed decision, scoped to the caller (user id or
//! system SAN) and its organisation, with what a replay must answer.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_key")]
pub struct Model {
    /// `user:<id>@<ods>` or `system:<san>@<ods>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub scope: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    pub fingerprint: Vec<u8>,
    pub lookup_id: String,
    pub decided_at: i64,
    pub audit_sequence: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
