//! An unattended system known by its client certificate's SAN.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "system")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub san: String,
    pub ods_code: String,
    /// Activity codes separated by spaces (only `CPIS_LA_MANAGE` can be registered).
    pub activities: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
