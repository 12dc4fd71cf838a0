//! One record of the hash-chained audit log: one decision, or what a watch delivered. Inserted once, never updated or
//! deleted by the application.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_record")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sequence: i64,
    pub recorded_at: i64,
    pub user_id: String,
    pub role_code: String,
    pub ods_code: String,
    pub site_ods_code: String,
    pub nhs_number: String,
    pub action: String,
    /// `UNSCHEDULED`, `SCHEDULED`, or empty when the action is not a lookup.
    pub access_kind: String,
    /// `ALLOWED`, `DENIED` or `DELIVERED` (a watch's delivery, not a decision).
    pub outcome: String,
    pub reason: String,
    pub request_id: String,
    pub trace_id: String,
    pub lookup_id: String,
    /// For a `DELIVERED` record, what the watch relayed: its first and last cursor and how
    /// many; 0 in every other record.
    pub delivered_first: i64,
    pub delivered_last: i64,
    pub delivered_count: i64,
    /// The user's display name (CIS2's `name`); empty for a system, and in records written
    /// before names were recorded.
    pub user_name: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
