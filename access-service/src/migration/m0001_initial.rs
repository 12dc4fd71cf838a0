//! Organisations, systems, the audit log and its head, obligations and idempotency keys.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Organisation {
    Table,
    OdsCode,
    Name,
    Kind,
    Onboarded,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum System {
    Table,
    San,
    OdsCode,
    Activities,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuditRecord {
    Table,
    Sequence,
    RecordedAt,
    UserId,
    RoleCode,
    OdsCode,
    SiteOdsCode,
    NhsNumber,
    Action,
    AccessKind,
    Outcome,
    Reason,
    RequestId,
    TraceId,
    LookupId,
    PrevHash,
    Hash,
}

#[derive(DeriveIden)]
enum AuditHead {
    Table,
    Id,
    Sequence,
    Hash,
}

#[derive(DeriveIden)]
enum Obligation {
    Table,
    LookupId,
    NhsNumber,
    AccessedAt,
    UserId,
    RoleCode,
    SiteOdsCode,
    OrganisationOdsCode,
    OrganisationName,
    SettingType,
    Attempts,
    LeaseOwner,
    LeaseExpiresAt,
    CompletedAt,
    CompletedBy,
}

#[derive(DeriveIden)]
enum IdempotencyKey {
    Table,
    Scope,
    RequestId,
    Fingerprint,
    LookupId,
    DecidedAt,
    AuditSequence,
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string().not_null().to_owned()
}

fn instant(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

fn bytes(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).binary().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Organisation::Table)
                    .col(text(Organisation::OdsCode).primary_key())
                    .col(text(Organisation::Name))
                    .col(text(Organisation::Kind))
                    .col(ColumnDef::new(Organisation::Onboarded).boolean().not_null())
                    .col(instant(Organisation::CreatedAt))
                    .col(instant(Organisation::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(System::Table)
                    .col(text(System::San).primary_key())
                    .col(text(System::OdsCode))
                    .col(text(System::Activities))
                    .col(instant(System::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditRecord::Table)
                    .col(instant(AuditRecord::Sequence).primary_key())
                    .col(instant(AuditRecord::RecordedAt))
                    .col(text(AuditRecord::UserId))
                    .col(text(AuditRecord::RoleCode))
                    .col(text(AuditRecord::OdsCode))
                    .col(text(AuditRecord::SiteOdsCode))
                    .col(text(AuditRecord::NhsNumber))
                    .col(text(AuditRecord::Action))
                    .col(text(AuditRecord::AccessKind))
                    .col(text(AuditRecord::Outcome))
                    .col(text(AuditRecord::Reason))
                    .col(text(AuditRecord::RequestId))
                    .col(text(AuditRecord::TraceId))
                    .col(text(AuditRecord::LookupId))
                    .col(bytes(AuditRecord::PrevHash))
                    .col(bytes(AuditRecord::Hash))
                    .to_owned(),
            )
            .await?;
        // Privacy officers ask "who looked at this child" and "what did this user do".
        for (name, column) in [
            ("ix_audit_record_nhs_number", AuditRecord::NhsNumber),
            ("ix_audit_record_user_id", AuditRecord::UserId),
            ("ix_audit_record_ods_code", AuditRecord::OdsCode),
            ("ix_audit_record_recorded_at", AuditRecord::RecordedAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditRecord::Table)
                        .col(column)
                        .col(AuditRecord::Sequence)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(AuditHead::Table)
                    .col(
                        ColumnDef::new(AuditHead::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(instant(AuditHead::Sequence))
                    .col(bytes(AuditHead::Hash))
                    .to_owned(),
            )
            .await?;
        // The genesis head: sequence 0, hash all zeros. Appenders only ever update this row.
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(AuditHead::Table)
                    .columns([AuditHead::Id, AuditHead::Sequence, AuditHead::Hash])
                    .values_panic([1i32.into(), 0i64.into(), vec![0u8; 32].into()])
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Obligation::Table)
                    .col(text(Obligation::LookupId).primary_key())
                    .col(text(Obligation::NhsNumber))
                    .col(instant(Obligation::AccessedAt))
                    .col(text(Obligation::UserId))
                    .col(text(Obligation::RoleCode))
                    .col(text(Obligation::SiteOdsCode))
                    .col(text(Obligation::OrganisationOdsCode))
                    .col(text(Obligation::OrganisationName))
                    .col(text(Obligation::SettingType))
                    .col(ColumnDef::new(Obligation::Attempts).integer().not_null())
                    .col(ColumnDef::new(Obligation::LeaseOwner).string().null())
                    .col(
                        ColumnDef::new(Obligation::LeaseExpiresAt)
                            .big_integer()
                            .null(),
                    )
                    .col(ColumnDef::new(Obligation::CompletedAt).big_integer().null())
                    .col(ColumnDef::new(Obligation::CompletedBy).string().null())
                    .to_owned(),
            )
            .await?;
        // The reconciler's scan: pending ones, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("ix_obligation_pending")
                    .table(Obligation::Table)
                    .col(Obligation::CompletedAt)
                    .col(Obligation::AccessedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKey::Table)
                    .col(text(IdempotencyKey::Scope))
                    .col(text(IdempotencyKey::RequestId))
                    .col(bytes(IdempotencyKey::Fingerprint))
                    .col(text(IdempotencyKey::LookupId))
                    .col(instant(IdempotencyKey::DecidedAt))
                    .col(instant(IdempotencyKey::AuditSequence))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKey::Scope)
                            .col(IdempotencyKey::RequestId),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
