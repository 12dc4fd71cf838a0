//! Who looked, by name: the user's display name (CIS2's `name` claim) on every audit record,
//! empty in every record written before (which keeps its meaning and its hash).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditRecord {
    Table,
    UserName,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuditRecord::Table)
                    .add_column(
                        ColumnDef::new(AuditRecord::UserName)
                            .string()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuditRecord::Table)
                    .drop_column(AuditRecord::UserName)
                    .to_owned(),
            )
            .await
    }
}
