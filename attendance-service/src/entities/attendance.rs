//! One row of `attendances`: one notifying lookup from unscheduled care.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attendances")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub lookup_id: String,
    pub nhs_number: String,
    /// UTC, whole microseconds (what PostgreSQL keeps), so both backends compare alike.
    pub attended_at: DateTimeUtc,
    pub site_ods_code: String,
    pub organisation_name: String,
    /// The setting type's enum suffix, such as `EMERGENCY_DEPARTMENT`.
    pub setting_type: String,
    pub user_id: String,
    pub role_code: String,
    pub recorded_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
