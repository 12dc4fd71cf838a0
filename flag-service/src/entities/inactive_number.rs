//! An NHS number marked inactive, with the number superseding it when known.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inactive_numbers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub nhs_number: String,
    pub superseded_by: String,
    pub marked_at: DateTimeUtc,
    pub marked_by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
