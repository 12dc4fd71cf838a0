//! The registry: flags and their history, uploads (reports and staging), restrictions,
//! inactive numbers, and the per-LA notification outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Flags {
    Table,
    Id,
    LaOdsCode,
    LaName,
    NhsNumber,
    FlagType,
    StartDate,
    EndDate,
    DueDate,
    EmergencyPhone,
    OfficeHoursPhone,
    Email,
    Deleted,
    DeletedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum FlagHistory {
    Table,
    Id,
    LaOdsCode,
    NhsNumber,
    FlagType,
    StartDate,
    Change,
    Before,
    After,
    Actor,
    Source,
    ChangedAt,
}

#[derive(DeriveIden)]
enum Uploads {
    Table,
    LaOdsCode,
    UploadId,
    Fingerprint,
    Status,
    Accepted,
    Rejected,
    Report,
    UploadedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UploadStaging {
    Table,
    AttemptId,
    Position,
    Record,
    StagedAt,
}

#[derive(DeriveIden)]
enum Restrictions {
    Table,
    NhsNumber,
    Reason,
    SetAt,
    SetBy,
}

#[derive(DeriveIden)]
enum InactiveNumbers {
    Table,
    NhsNumber,
    SupersededBy,
    MarkedAt,
    MarkedBy,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    LaOdsCode,
    Cursor,
    Kind,
    NhsNumber,
    FlagType,
    FlagStartDate,
    AccessedAt,
    UserId,
    RoleCode,
    OdsCode,
    OrganisationName,
    SettingType,
    LookupId,
    SupersededBy,
}

#[derive(DeriveIden)]
enum Outboxes {
    Table,
    LaOdsCode,
    LastCursor,
    AcknowledgedCursor,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Flags::Table)
                    .col(big_pk_auto(Flags::Id))
                    .col(string_len(Flags::LaOdsCode, 8))
                    .col(string(Flags::LaName))
                    .col(string_len(Flags::NhsNumber, 10))
                    .col(string_len(Flags::FlagType, 8))
                    .col(date(Flags::StartDate))
                    .col(date_null(Flags::EndDate))
                    .col(date_null(Flags::DueDate))
                    .col(string(Flags::EmergencyPhone))
                    .col(string(Flags::OfficeHoursPhone))
                    .col(string_len(Flags::Email, 254))
                    .col(boolean(Flags::Deleted))
                    .col(timestamp_with_time_zone_null(Flags::DeletedAt))
                    .col(timestamp_with_time_zone(Flags::CreatedAt))
                    .col(timestamp_with_time_zone(Flags::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // The identity: uploads upsert on it.
        manager
            .create_index(
                Index::create()
                    .name("flags_identity")
                    .table(Flags::Table)
                    .col(Flags::LaOdsCode)
                    .col(Flags::NhsNumber)
                    .col(Flags::FlagType)
                    .col(Flags::StartDate)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Lookups read by number across every LA.
        manager
            .create_index(
                Index::create()
                    .name("flags_nhs_number")
                    .table(Flags::Table)
                    .col(Flags::NhsNumber)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(FlagHistory::Table)
                    .col(big_pk_auto(FlagHistory::Id))
                    .col(string_len(FlagHistory::LaOdsCode, 8))
                    .col(string_len(FlagHistory::NhsNumber, 10))
                    .col(string_len(FlagHistory::FlagType, 8))
                    .col(date(FlagHistory::StartDate))
                    .col(string_len(FlagHistory::Change, 16))
                    .col(text_null(FlagHistory::Before))
                    .col(text_null(FlagHistory::After))
                    .col(string(FlagHistory::Actor))
                    .col(string(FlagHistory::Source))
                    .col(timestamp_with_time_zone(FlagHistory::ChangedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("flag_history_flag")
                    .table(FlagHistory::Table)
                    .col(FlagHistory::LaOdsCode)
                    .col(FlagHistory::NhsNumber)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Uploads::Table)
                    .col(string_len(Uploads::LaOdsCode, 8))
                    .col(string_len(Uploads::UploadId, 128))
                    .col(string_len(Uploads::Fingerprint, 64))
                    .col(string_len(Uploads::Status, 16))
                    .col(big_integer(Uploads::Accepted))
                    .col(big_integer(Uploads::Rejected))
                    .col(blob(Uploads::Report))
                    .col(string(Uploads::UploadedBy))
                    .col(timestamp_with_time_zone(Uploads::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(Uploads::LaOdsCode)
                            .col(Uploads::UploadId),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UploadStaging::Table)
                    .col(string_len(UploadStaging::AttemptId, 36))
                    .col(big_integer(UploadStaging::Position))
                    .col(blob(UploadStaging::Record))
                    .col(timestamp_with_time_zone(UploadStaging::StagedAt))
                    .primary_key(
                        Index::create()
                            .col(UploadStaging::AttemptId)
                            .col(UploadStaging::Position),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("upload_staging_staged_at")
                    .table(UploadStaging::Table)
                    .col(UploadStaging::StagedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Restrictions::Table)
                    .col(string_len(Restrictions::NhsNumber, 10).primary_key())
                    .col(string_len(Restrictions::Reason, 2000))
                    .col(timestamp_with_time_zone(Restrictions::SetAt))
                    .col(string(Restrictions::SetBy))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(InactiveNumbers::Table)
                    .col(string_len(InactiveNumbers::NhsNumber, 10).primary_key())
                    .col(string_len(InactiveNumbers::SupersededBy, 10))
                    .col(timestamp_with_time_zone(InactiveNumbers::MarkedAt))
                    .col(string(InactiveNumbers::MarkedBy))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .col(big_pk_auto(Notifications::Id))
                    .col(string_len(Notifications::LaOdsCode, 8))
                    .col(big_integer(Notifications::Cursor))
                    .col(string_len(Notifications::Kind, 24))
                    .col(string_len(Notifications::NhsNumber, 10))
                    .col(string_len(Notifications::FlagType, 8))
                    .col(date(Notifications::FlagStartDate))
                    .col(timestamp_with_time_zone(Notifications::AccessedAt))
                    .col(string(Notifications::UserId))
                    .col(string(Notifications::RoleCode))
                    .col(string(Notifications::OdsCode))
                    .col(string(Notifications::OrganisationName))
                    .col(string_len(Notifications::SettingType, 32))
                    .col(string_null(Notifications::LookupId))
                    .col(string_len(Notifications::SupersededBy, 10))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("notifications_la_cursor")
                    .table(Notifications::Table)
                    .col(Notifications::LaOdsCode)
                    .col(Notifications::Cursor)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // One ACCESS notification per (lookup, flag); NULL lookup ids (other kinds) never clash.
        manager
            .create_index(
                Index::create()
                    .name("notifications_lookup_flag")
                    .table(Notifications::Table)
                    .col(Notifications::LookupId)
                    .col(Notifications::LaOdsCode)
                    .col(Notifications::NhsNumber)
                    .col(Notifications::FlagType)
                    .col(Notifications::FlagStartDate)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Outboxes::Table)
                    .col(string_len(Outboxes::LaOdsCode, 8).primary_key())
                    .col(big_integer(Outboxes::LastCursor))
                    .col(big_integer(Outboxes::AcknowledgedCursor))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Outboxes::Table.into_iden(),
            Notifications::Table.into_iden(),
            InactiveNumbers::Table.into_iden(),
            Restrictions::Table.into_iden(),
            UploadStaging::Table.into_iden(),
            Uploads::Table.into_iden(),
            FlagHistory::Table.into_iden(),
            Flags::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
