//! Obligations retry with backoff and can fail (issue 17): when the next try is due, the
//! failures that count and since when, the last error, and the failed state.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Obligation {
    Table,
    LookupId,
    CompletedAt,
    NextAttemptAt,
    Failures,
    Deferrals,
    FailingSince,
    LastError,
    FailedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time. The defaults make
        // every obligation already stored due now, with nothing counted against it.
        for column in [
            ColumnDef::new(Obligation::NextAttemptAt)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Obligation::Failures)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Obligation::Deferrals)
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Obligation::FailingSince)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Obligation::LastError)
                .string()
                .null()
                .to_owned(),
            ColumnDef::new(Obligation::FailedAt)
                .big_integer()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Obligation::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // The reconciler's claim: live obligations whose next try is due. Partial, so the
        // index holds only the few live rows, not every completed obligation ever written,
        // and skips failed ones however many pile up.
        manager
            .create_index(
                Index::create()
                    .name("ix_obligation_due")
                    .table(Obligation::Table)
                    .col(Obligation::NextAttemptAt)
                    .and_where(Expr::col(Obligation::CompletedAt).is_null())
                    .and_where(Expr::col(Obligation::FailedAt).is_null())
                    .to_owned(),
            )
            .await?;
        // ListFailedObligations pages through the failed ones by lookup_id.
        manager
            .create_index(
                Index::create()
                    .name("ix_obligation_failed")
                    .table(Obligation::Table)
                    .col(Obligation::LookupId)
                    .and_where(Expr::col(Obligation::CompletedAt).is_null())
                    .and_where(Expr::col(Obligation::FailedAt).is_not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
