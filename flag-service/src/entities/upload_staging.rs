//! Records of an upload in progress, keyed by a per-attempt id: applied and deleted together
//! when the stream ends cleanly, deleted when it breaks.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "upload_staging")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub attempt_id: String,
    /// The record's 0-based position in the upload.
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i64,
    /// The `FlagRecord`, protobuf-encoded.
    pub record: Vec<u8>,
    pub staged_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
