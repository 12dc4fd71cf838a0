//! The `attendances` table and the two indexes its queries live on.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_pk_auto, string, string_len, string_len_uniq, timestamp_with_time_zone,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Attendances {
    Table,
    Id,
    LookupId,
    NhsNumber,
    AttendedAt,
    SiteOdsCode,
    OrganisationName,
    SettingType,
    UserId,
    RoleCode,
    RecordedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Attendances::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Attendances::Id))
                    // Unique: the idempotency key, so concurrent retries meet in the database.
                    .col(string_len_uniq(Attendances::LookupId, 128))
                    .col(string_len(Attendances::NhsNumber, 10))
                    .col(timestamp_with_time_zone(Attendances::AttendedAt))
                    .col(string_len(Attendances::SiteOdsCode, 8))
                    .col(string(Attendances::OrganisationName))
                    .col(string_len(Attendances::SettingType, 32))
                    .col(string(Attendances::UserId))
                    .col(string_len(Attendances::RoleCode, 32))
                    .col(timestamp_with_time_zone(Attendances::RecordedAt))
                    .to_owned(),
            )
            .await?;
        // The summary reads one person's newest attendances first.
        manager
            .create_index(
                Index::create()
                    .name("idx_attendances_nhs_number_attended_at")
                    .table(Attendances::Table)
                    .col(Attendances::NhsNumber)
                    .col((Attendances::AttendedAt, IndexOrder::Desc))
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // Retention finds the oldest rows without scanning the table.
        manager
            .create_index(
                Index::create()
                    .name("idx_attendances_attended_at")
                    .table(Attendances::Table)
                    .col(Attendances::AttendedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Attendances::Table).to_owned())
            .await
    }
}
