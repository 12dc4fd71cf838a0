//! The obligations outbox (ARCHITECTURE.md rule 3): pending work of allowed notifying lookups.
//! The gateway completes each inline; its reconciler claims those left pending, under a lease,
//! so only one replica works on an obligation at a time and a crashed one's work is retaken.

use super::now_micros;
use crate::audit::list::instant_of;
use crate::entities::obligation;
use crate::error::AccessError;
use cpis_proto::access::{
    ClaimObligationsRequest, ClaimObligationsResponse, CompleteObligationRequest, Obligation,
};
use platform::Result;
use platform::domain::SettingType;
use platform::error::Violations;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter};
use std::time::Duration;

pub const MAX_LEASE: Duration = Duration::from_secs(600);
pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 1000;

pub fn to_wire(row: &obligation::Model) -> Obligation {
    Obligation {
        lookup_id: row.lookup_id.clone(),
        nhs_number: row.nhs_number.clone(),
        accessed_at: Some(instant_of(row.accessed_at)),
        user_id: row.user_id.clone(),
        role_code: row.role_code.clone(),
        site_ods_code: row.site_ods_code.clone(),
        organisation_ods_code: row.organisation_ods_code.clone(),
        organisation_name: row.organisation_name.clone(),
        setting_type: SettingType::parse(&row.setting_type)
            .map(i32::from)
            .unwrap_or_default(),
        attempts: u32::try_from(row.attempts).unwrap_or(0),
    }
}

/// A wire duration in microseconds; `None` when its fields disagree in sign or overflow.
fn duration_micros(d: &prost_types::Duration) -> Option<i64> {
    if (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
        return None;
    }
    d.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(d.nanos) / 1_000)
}

pub async fn claim(
    db: &DatabaseConnection,
    request: ClaimObligationsRequest,
) -> Result<ClaimObligationsResponse> {
    let mut v = Violations::new();
    if request.claimant.is_empty() {
        v.add("claimant", "is required");
    }
    v.max_len("claimant", &request.claimant, 255);
    let lease = request.lease.as_ref().and_then(duration_micros);
    let max_lease = MAX_LEASE.as_micros() as i64;
    if !lease.is_some_and(|l| l > 0 && l <= max_lease) {
        v.add("lease", "must be set, positive and at most 10 minutes");
    }
    let pending_for = match &request.pending_for {
        None => Some(0),
        Some(d) => duration_micros(d).filter(|p| *p >= 0),
    };
    if pending_for.is_none() {
        v.add("pending_for", "must not be negative");
    }
    let (lease, pending_for) = v.check(lease.zip(pending_for))?;
    let limit = match u64::from(request.limit) {
        0 => DEFAULT_LIMIT,
        n => Ord::min(n, MAX_LIMIT),
    };

    let now = now_micros();
    let lapsed = || {
        Condition::any()
            .add(obligation::Column::LeaseExpiresAt.is_null())
            .add(obligation::Column::LeaseExpiresAt.lte(now))
    };
    // PostgreSQL: SKIP LOCKED lets concurrent claimants take disjoint rows instead of queueing
    // on (and then double-claiming) the same ones. SQLite ignores the clause; there the single
    // UPDATE statement is atomic on its own.
    let candidates = Query::select()
        .column(obligation::Column::LookupId)
        .from(obligation::Entity)
        .cond_where(
            Condition::all()
                .add(obligation::Column::CompletedAt.is_null())
                .add(obligation::Column::AccessedAt.lte(now.saturating_sub(pending_for)))
                .add(lapsed()),
        )
        .order_by(obligation::Column::AccessedAt, sea_orm::Order::Asc)
        .order_by(obligation::Column::LookupId, sea_orm::Order::Asc)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
    let mut claimed = obligation::Entity::update_many()
        .col_expr(
            obligation::Column::LeaseOwner,
            Expr::value(request.claimant.clone()),
        )
        .col_expr(
            obligation::Column::LeaseExpiresAt,
            Expr::value(now.saturating_add(lease)),
        )
        .col_expr(
            obligation::Column::Attempts,
            Expr::col(obligation::Column::Attempts).add(1),
        )
        .filter(obligation::Column::LookupId.in_subquery(candidates))
        // Re-checked on the row actually updated, in case another claimant got there first.
        .filter(obligation::Column::CompletedAt.is_null())
        .filter(lapsed())
        .exec_with_returning(db)
        .await?;
    claimed.sort_by(|a, b| (a.accessed_at, &a.lookup_id).cmp(&(b.accessed_at, &b.lookup_id)));
    Ok(ClaimObligationsResponse {
        obligations: claimed.iter().map(to_wire).collect(),
    })
}

pub async fn complete(db: &DatabaseConnection, request: CompleteObligationRequest) -> Result<()> {
    let mut v = Violations::new();
    if request.lookup_id.is_empty() {
        v.add("lookup_id", "is required");
    }
    v.max_len("claimant", &request.claimant, 255);
    v.finish()?;
    let done = obligation::Entity::update_many()
        .col_expr(obligation::Column::CompletedAt, Expr::value(now_micros()))
        .col_expr(
            obligation::Column::CompletedBy,
            Expr::value(request.claimant.clone()),
        )
        .filter(obligation::Column::LookupId.eq(request.lookup_id.as_str()))
        .filter(obligation::Column::CompletedAt.is_null())
        .exec(db)
        .await?;
    if done.rows_affected == 0 {
        // Already completed is fine (idempotent); never existing is not.
        let exists = obligation::Entity::find_by_id(request.lookup_id)
            .one(db)
            .await?
            .is_some();
        if !exists {
            return Err(AccessError::ObligationNotFound.into());
        }
    }
    Ok(())
}
