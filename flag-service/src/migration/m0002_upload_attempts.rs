//! Upload attempts with leases: cleanup deletes only the staging of attempts whose lease
//! lapsed, so one replica never cuts another's live upload (start-up used to delete every
//! record staged more than 15 minutes before, whoever was still sending it).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UploadAttempts {
    Table,
    AttemptId,
    LaOdsCode,
    StartedAt,
    LeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UploadAttempts::Table)
                    .col(string_len(UploadAttempts::AttemptId, 36).primary_key())
                    .col(string_len(UploadAttempts::LaOdsCode, 8))
                    .col(timestamp_with_time_zone(UploadAttempts::StartedAt))
                    .col(timestamp_with_time_zone(UploadAttempts::LeaseUntil))
                    .to_owned(),
            )
            .await?;
        // Cleanup looks for the lapsed leases, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("upload_attempts_lease_until")
                    .table(UploadAttempts::Table)
                    .col(UploadAttempts::LeaseUntil)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UploadAttempts::Table).to_owned())
            .await?;
        Ok(())
    }
}
