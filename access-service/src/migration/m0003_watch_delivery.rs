//! What a watch delivered, recorded in the audit log: three columns on `audit_record`, 0 in
//! every record that is not a delivery (so every record written before keeps its meaning and
//! its hash).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditRecord {
    Table,
    DeliveredFirst,
    DeliveredLast,
    DeliveredCount,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            AuditRecord::DeliveredFirst,
            AuditRecord::DeliveredLast,
            AuditRecord::DeliveredCount,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AuditRecord::Table)
                        .add_column(ColumnDef::new(column).big_integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            AuditRecord::DeliveredFirst,
            AuditRecord::DeliveredLast,
            AuditRecord::DeliveredCount,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AuditRecord::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
