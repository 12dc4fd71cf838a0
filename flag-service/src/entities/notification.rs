//! One notification in an LA's outbox, at its cursor. ACCESS notifications carry the lookup id,
//! unique per flag; other kinds leave it NULL.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub la_ods_code: String,
    pub cursor: i64,
    /// `ACCESS`, `NHS_NUMBER_INACTIVE` or `RESTRICTED`.
    pub kind: String,
    pub nhs_number: String,
    pub flag_type: String,
    pub flag_start_date: Date,
    pub accessed_at: DateTimeUtc,
    pub user_id: String,
    pub role_code: String,
    pub ods_code: String,
    pub organisation_name: String,
    /// `SettingType::as_str`, empty when none.
    pub setting_type: String,
    pub lookup_id: Option<String>,
    pub superseded_by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
