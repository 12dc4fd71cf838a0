//! Work an allowed notifying lookup still owes (ARCHITECTURE.md rule 3): written with its
//! audit record, completed by the gateway, reclaimed by its reconciler under a lease, retried
//! with backoff, and failed when its work keeps failing (`storage::obligations`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "obligation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub lookup_id: String,
    pub nhs_number: String,
    pub accessed_at: i64,
    pub user_id: String,
    pub role_code: String,
    pub site_ods_code: String,
    pub organisation_ods_code: String,
    pub organisation_name: String,
    /// The setting type's enum suffix, such as `EMERGENCY_DEPARTMENT`.
    pub setting_type: String,
    pub attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub completed_by: Option<String>,
    /// Not claimed before this instant: the backoff after a failed try.
    pub next_attempt_at: i64,
    /// Tries that failed for a reason other than a backend being unavailable.
    pub failures: i32,
    /// Tries in a row that found a backend unavailable (they never count as failures).
    pub deferrals: i32,
    /// The first counted failure since it was written or last retried by an operator.
    pub failing_since: Option<i64>,
    /// The last counted failure, sanitised (`storage::obligations::sanitise`).
    pub last_error: Option<String>,
    /// Set when it moved to the failed state: no longer claimed until an operator retries it.
    pub failed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
