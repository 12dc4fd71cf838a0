//! The access-service schema, one migration per change, applied by `access-service migrate` or at start.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_obligation_retries;
mod m0003_watch_delivery;
mod m0004_audit_user_name;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_obligation_retries::Migration),
            Box::new(m0003_watch_delivery::Migration),
            Box::new(m0004_audit_user_name::Migration),
        ]
    }
}
