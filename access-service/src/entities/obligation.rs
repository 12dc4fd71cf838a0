//! Work an allowed notifying lookup still owes (ARCHITECTURE.md rule 3): written with its
//! audit record, completed by the gateway, reclaimed by its reconciler under a lease.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "obligation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub lookup_id: String,
    pub nhs_number: String,
    pub accessed_at: i64,
    pub user_id: String,
    pub role_code: String,
    pub site_ods_code: String,
    pub organisation_ods_code: String,
    pub organisation_name: String,
    /// The setting type's enum suffix, such as `EMERGENCY_DEPARTMENT`.
    pub setting_type: String,
    pub attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub completed_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
