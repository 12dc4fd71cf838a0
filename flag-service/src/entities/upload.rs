//! A completed upload, keyed by (LA, upload_id): the fingerprint of its records and the report
//! it answered, returned again to a resend.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "uploads")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub la_ods_code: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub upload_id: String,
    /// SHA-256 (hex) of the records, in order.
    pub fingerprint: String,
    pub status: String,
    pub accepted: i64,
    pub rejected: i64,
    /// The `UploadFlagsResponse`, protobuf-encoded.
    pub report: Vec<u8>,
    pub uploaded_by: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
