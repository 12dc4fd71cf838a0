//! One upload in progress on some replica: its staged records are safe from cleanup while its
//! lease holds. The lease is renewed as each message is staged and when the upload is applied;
//! an attempt whose lease lapsed belongs to a process that died (or a stream that stalled), and
//! any replica may delete it with its records.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "upload_attempts")]
pub struct Model {
    /// The attempt id its `upload_staging` rows carry.
    #[sea_orm(primary_key, auto_increment = false)]
    pub attempt_id: String,
    /// The LA uploading, for operators reading the table.
    pub la_ods_code: String,
    pub started_at: DateTimeUtc,
    /// Until when no cleanup may delete the attempt.
    pub lease_until: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
