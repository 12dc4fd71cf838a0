//! Every change to a flag: who, when, through what (an upload or an RPC), and the flag's
//! state before and after as JSON (`None` before its creation).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "flag_history")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub la_ods_code: String,
    pub nhs_number: String,
    pub flag_type: String,
    pub start_date: Date,
    /// `created`, `updated`, `ended` or `deleted`.
    pub change: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// The user id, or a system's certificate SAN.
    pub actor: String,
    /// `upload:<upload_id>`, `EndFlag` or `DeleteFlag`.
    pub source: String,
    pub changed_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
