//! Per-LA outbox head: the last cursor assigned (the counter the next notification takes its
//! cursor from, in the same transaction) and how far the LA has acknowledged.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outboxes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub la_ods_code: String,
    pub last_cursor: i64,
    pub acknowledged_cursor: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
