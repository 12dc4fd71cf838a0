//! Everything the registry reads and writes, behind small functions the handlers call. Writes
//! run in one transaction each; on SQLite they take the write lock at `BEGIN` (IMMEDIATE), so a
//! transaction that reads before it writes never meets a stale snapshot.

pub mod flags;
pub mod outbox;
pub mod restrictions;
pub mod uploads;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

/// Rows per multi-row statement: under SQLite's and PostgreSQL's bound-parameter limits for
/// the widest table written in bulk (15 columns).
pub const ROWS_PER_STATEMENT: usize = 1_000;
/// NHS numbers per `IN (...)` list.
pub const NUMBERS_PER_QUERY: usize = 1_000;

pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// Serialises an upload against `SetRestriction` on PostgreSQL: SHARE conflicts with the row
/// locks a restriction's insert takes, but not with other uploads. Once a restriction has
/// committed, an upload that takes this lock reads it; an upload holding it makes the
/// restriction wait, so the restriction's notifications see the upload's flags. (SQLite
/// serialises every write transaction already.)
pub async fn hold_restrictions_still(txn: &DatabaseTransaction) -> Result<(), DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("LOCK TABLE restrictions IN SHARE MODE")
            .await?;
    }
    Ok(())
}
