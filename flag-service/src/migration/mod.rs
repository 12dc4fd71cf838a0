//! The flag-service schema, one migration per change, applied by `flag-service migrate` or at start.

use sea_orm_migration::prelude::*;

mod m0001_registry;
mod m0002_upload_attempts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_registry::Migration),
            Box::new(m0002_upload_attempts::Migration),
        ]
    }
}
