//! One flag: identity (LA, NHS number, type, start date), dates and contacts. A deleted flag
//! keeps its row (and its history) but never appears in lookups.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "flags")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub la_ods_code: String,
    pub la_name: String,
    pub nhs_number: String,
    /// `CPP`, `LAC` or `UCPP` (`FlagType::as_str`).
    pub flag_type: String,
    pub start_date: Date,
    pub end_date: Option<Date>,
    pub due_date: Option<Date>,
    pub emergency_phone: String,
    pub office_hours_phone: String,
    pub email: String,
    pub deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
