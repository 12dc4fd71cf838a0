//! The obligations outbox (ARCHITECTURE.md rule 3): pending work of allowed notifying lookups.
//! The gateway completes each inline; its reconciler claims those left pending, under a lease,
//! so only one replica works on an obligation at a time and a crashed one's work is retaken.
//!
//! A try that fails is released with backoff ([`RetryPolicy`], [`after_failure`]). A try that
//! found a backend unavailable never counts: the outage is not the obligation's fault, and
//! its retries stay frequent so the work is done soon after the backend is back. One whose
//! work keeps failing for another reason for a day moves to the failed state: no longer
//! claimed, counted by a gauge that alerts ([`backlog`]), listed for administrators
//! ([`list_failed`]) until one returns it to the reconciler ([`retry`]).
//!
//! Functions that read the clock take `now` (microseconds since the epoch, as stored), so
//! tests drive the clock instead of sleeping.

use super::now_micros;
use crate::audit::list::instant_of;
use crate::entities::obligation;
use crate::error::AccessError;
use cpis_proto::access::{
    ClaimObligationsRequest, ClaimObligationsResponse, CompleteObligationRequest, Obligation,
    ReleaseObligationRequest, ReleaseObligationResponse,
};
use cpis_proto::gateway::{FailedObligation, ListFailedObligationsResponse};
use platform::Result;
use platform::domain::SettingType;
use platform::error::{Violations, is_invisible_format};
use platform::pagination::Page;
use platform::requests::MAX_LOOKUP_ID_BYTES;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};
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
        failures: u32::try_from(row.failures).unwrap_or(0),
    }
}

/// A failed obligation as administrators see it: no NHS number, user, role or site (the
/// proto comment of `FailedObligation` says why).
fn to_failed_wire(row: &obligation::Model) -> FailedObligation {
    FailedObligation {
        lookup_id: row.lookup_id.clone(),
        accessed_at: Some(instant_of(row.accessed_at)),
        ods_code: row.organisation_ods_code.clone(),
        organisation_name: row.organisation_name.clone(),
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        failures: u32::try_from(row.failures).unwrap_or(0),
        last_error: row.last_error.clone().unwrap_or_default(),
        failing_since: row.failing_since.map(instant_of),
        failed_at: row.failed_at.map(instant_of),
    }
}

/// How the reconciler's tries are spaced, and when they stop.
///
/// - After a counted failure (the backend answered, with an error): 30 s after the first,
///   doubling with each one after (1 min, 2 min, 4 min ...), at most 1 hour.
/// - After a try that found a backend unavailable: 5 s after the first in a row, doubling, at
///   most 60 s, about as often as the reconciler polls: the work is done soon after the
///   backend is back. These never count and never move an obligation to failed.
/// - A counted failure at least `fail_after` (24 h by default) after the first one moves the
///   obligation to failed instead of scheduling another try.
///
/// The steps are deterministic (no jitter): obligations failing together are retried
/// together, which is what a batch claim wants, and tests can state the schedule exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    pub deferral_first: Duration,
    pub deferral_max: Duration,
    pub fail_after: Duration,
}

impl RetryPolicy {
    /// One day: an outage fixed within a working day never needs a person, and a missed
    /// notification still reaches someone the next day.
    pub const DEFAULT_FAIL_AFTER: Duration = Duration::from_secs(24 * 3600);

    pub fn failing_after(fail_after: Duration) -> Self {
        RetryPolicy {
            fail_after,
            ..RetryPolicy::default()
        }
    }

    /// The wait after the `n`th counted failure (n >= 1).
    pub fn backoff(&self, n: i32) -> Duration {
        doubling(self.backoff_first, self.backoff_max, n)
    }

    /// The wait after the `n`th try in a row that found a backend unavailable (n >= 1).
    pub fn deferral(&self, n: i32) -> Duration {
        doubling(self.deferral_first, self.deferral_max, n)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff_first: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            deferral_first: Duration::from_secs(5),
            deferral_max: Duration::from_secs(60),
            fail_after: Self::DEFAULT_FAIL_AFTER,
        }
    }
}

/// `first`, doubled `n - 1` times, at most `max`.
fn doubling(first: Duration, max: Duration, n: i32) -> Duration {
    let doublings = Ord::min(u32::try_from(n.saturating_sub(1)).unwrap_or(0), 31);
    Ord::min(first.saturating_mul(1u32 << doublings), max)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Why a try failed, as the outbox counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure<'a> {
    /// A backend could not take the call: not counted.
    Unavailable,
    /// Anything else, with what the gateway said failed.
    Other(&'a str),
}

/// What a failed try changes in the obligation as it was claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfterFailure {
    pub next_attempt_at: i64,
    pub failures: i32,
    pub deferrals: i32,
    pub failing_since: Option<i64>,
    pub last_error: Option<String>,
    pub failed_at: Option<i64>,
}

/// The schedule of [`RetryPolicy`] applied to one failed try at `now`: pure, so it is tested
/// without a database. An unavailable backend leaves the failure count, `failing_since` and
/// the last counted error as they were.
pub fn after_failure(
    row: &obligation::Model,
    policy: &RetryPolicy,
    failure: Failure<'_>,
    now: i64,
) -> AfterFailure {
    match failure {
        Failure::Unavailable => {
            let deferrals = row.deferrals.saturating_add(1);
            AfterFailure {
                next_attempt_at: now.saturating_add(micros(policy.deferral(deferrals))),
                failures: row.failures,
                deferrals,
                failing_since: row.failing_since,
                last_error: row.last_error.clone(),
                failed_at: None,
            }
        }
        Failure::Other(error) => {
            let failures = row.failures.saturating_add(1);
            let failing_since = row.failing_since.unwrap_or(now);
            let failed = now.saturating_sub(failing_since) >= micros(policy.fail_after);
            AfterFailure {
                next_attempt_at: now.saturating_add(micros(policy.backoff(failures))),
                failures,
                deferrals: 0,
                failing_since: Some(failing_since),
                last_error: Some(sanitise(error)),
                failed_at: failed.then_some(now),
            }
        }
    }
}

/// The longest error kept, in characters.
pub const MAX_ERROR_CHARS: usize = 200;

/// An error as stored and shown to administrators: one line without control or invisible
/// formatting characters, with any run of 10 or more digits (single spaces or hyphens allowed
/// between them: an NHS number, a phone number) replaced by `[redacted]`, and at most
/// [`MAX_ERROR_CHARS`] characters. The gateway sends codes and messages, not request data,
/// but a backend's message is not ours to trust with personal data.
pub fn sanitise(error: &str) -> String {
    let chars: Vec<char> = error
        .chars()
        .map(|c| {
            if c.is_control() || is_invisible_format(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let (mut j, mut end, mut digits) = (i, i, 0);
        while j < chars.len() {
            if chars[j].is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if matches!(chars[j], ' ' | '-')
                && chars.get(j + 1).is_some_and(char::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        if digits >= 10 {
            out.push_str("[redacted]");
        } else {
            out.extend(&chars[i..end]);
        }
        i = end;
    }
    let out = out.trim();
    if out.chars().count() > MAX_ERROR_CHARS {
        let mut cut: String = out.chars().take(MAX_ERROR_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        out.to_owned()
    }
}

/// The lookup id of a request: required, and no longer than a lookup id can be.
fn lookup_id(v: &mut Violations, value: &str) {
    if value.is_empty() {
        v.add("lookup_id", "is required");
    }
    v.text("lookup_id", value, MAX_LOOKUP_ID_BYTES);
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
    claim_at(db, request, now_micros()).await
}

/// [`claim`] at `now`.
pub async fn claim_at(
    db: &DatabaseConnection,
    request: ClaimObligationsRequest,
    now: i64,
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
                .add(obligation::Column::FailedAt.is_null())
                .add(obligation::Column::NextAttemptAt.lte(now))
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
        .filter(obligation::Column::FailedAt.is_null())
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

/// Gives a claimed obligation back after a failed try, scheduled by `policy`
/// ([`after_failure`]). Only the lease holder's release counts; any other changes nothing.
pub async fn release(
    db: &DatabaseConnection,
    policy: &RetryPolicy,
    request: ReleaseObligationRequest,
    now: i64,
) -> Result<ReleaseObligationResponse> {
    let mut v = Violations::new();
    lookup_id(&mut v, &request.lookup_id);
    if request.claimant.is_empty() {
        v.add("claimant", "is required");
    }
    v.max_len("claimant", &request.claimant, 255);
    v.finish()?;
    let row = obligation::Entity::find_by_id(request.lookup_id.clone())
        .one(db)
        .await?
        .ok_or(AccessError::ObligationNotFound)?;
    let unchanged = ReleaseObligationResponse::default();
    if row.completed_at.is_some() || row.lease_owner.as_deref() != Some(&request.claimant) {
        return Ok(unchanged);
    }
    let failure = if request.unavailable {
        Failure::Unavailable
    } else {
        Failure::Other(&request.error)
    };
    let next = after_failure(&row, policy, failure, now);
    let updated = obligation::Entity::update_many()
        .col_expr(obligation::Column::LeaseOwner, Expr::value(None::<String>))
        .col_expr(obligation::Column::LeaseExpiresAt, Expr::value(None::<i64>))
        .col_expr(
            obligation::Column::NextAttemptAt,
            Expr::value(next.next_attempt_at),
        )
        .col_expr(obligation::Column::Failures, Expr::value(next.failures))
        .col_expr(obligation::Column::Deferrals, Expr::value(next.deferrals))
        .col_expr(
            obligation::Column::FailingSince,
            Expr::value(next.failing_since),
        )
        .col_expr(
            obligation::Column::LastError,
            Expr::value(next.last_error.clone()),
        )
        .col_expr(obligation::Column::FailedAt, Expr::value(next.failed_at))
        // The row as read: not completed, still this claimant's, not claimed again since (a
        // claim adds an attempt), so a slow release never undoes newer work.
        .filter(obligation::Column::LookupId.eq(row.lookup_id.as_str()))
        .filter(obligation::Column::CompletedAt.is_null())
        .filter(obligation::Column::LeaseOwner.eq(request.claimant.as_str()))
        .filter(obligation::Column::Attempts.eq(row.attempts))
        .exec(db)
        .await?;
    if updated.rows_affected == 0 {
        return Ok(unchanged);
    }
    let failed = next.failed_at.is_some();
    if failed {
        // A lookup id is a reference, not personal data: the operator needs it to retry.
        tracing::warn!(
            lookup_id = %row.lookup_id,
            failures = next.failures,
            "an obligation failed: the reconciler stops retrying it (ListFailedObligations, RetryObligation)"
        );
    }
    Ok(ReleaseObligationResponse {
        released: true,
        next_attempt_at: (!failed).then(|| instant_of(next.next_attempt_at)),
        failed,
    })
}

/// One page of failed obligations in lookup_id order (time order: lookup ids are UUIDv7).
pub async fn list_failed(
    db: &DatabaseConnection,
    page: &Page<String>,
) -> Result<ListFailedObligationsResponse> {
    let after = page.after.as_deref().unwrap_or_default();
    let rows = obligation::Entity::find()
        .filter(obligation::Column::CompletedAt.is_null())
        .filter(obligation::Column::FailedAt.is_not_null())
        .filter(obligation::Column::LookupId.gt(after))
        .order_by_asc(obligation::Column::LookupId)
        .limit(page.limit())
        .all(db)
        .await?;
    let (rows, next_page_token) = page.finish(rows, |row| row.lookup_id.clone());
    Ok(ListFailedObligationsResponse {
        obligations: rows.iter().map(to_failed_wire).collect(),
        next_page_token,
    })
}

/// Returns an obligation to the reconciler at `now`: no longer failed, nothing counted
/// against it, due at once. A lease held on it stays (its holder's release then schedules
/// from the cleared state).
pub async fn retry(db: &DatabaseConnection, lookup_id: &str, now: i64) -> Result<()> {
    let updated = obligation::Entity::update_many()
        .col_expr(obligation::Column::FailedAt, Expr::value(None::<i64>))
        .col_expr(obligation::Column::FailingSince, Expr::value(None::<i64>))
        .col_expr(obligation::Column::Failures, Expr::value(0))
        .col_expr(obligation::Column::Deferrals, Expr::value(0))
        .col_expr(obligation::Column::NextAttemptAt, Expr::value(now))
        .filter(obligation::Column::LookupId.eq(lookup_id))
        .filter(obligation::Column::CompletedAt.is_null())
        .exec(db)
        .await?;
    if updated.rows_affected == 0 {
        let exists = obligation::Entity::find_by_id(lookup_id.to_owned())
            .one(db)
            .await?
            .is_some();
        return Err(if exists {
            AccessError::ObligationCompleted
        } else {
            AccessError::ObligationNotFound
        }
        .into());
    }
    tracing::info!(lookup_id, "an obligation was returned to the reconciler");
    Ok(())
}

/// What the obligation gauges show: live obligations not failed (in backoff or not), failed
/// ones, and when the oldest live one not failed was looked up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    pub failed: u64,
    pub oldest_pending_at: Option<i64>,
}

/// [`Backlog`] in one statement over the live rows only (`ix_obligation_pending` leads with
/// `completed_at`), so a refresh every few seconds stays cheap however many completed
/// obligations the table holds.
pub async fn backlog(db: &DatabaseConnection) -> Result<Backlog> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(CASE WHEN failed_at IS NULL THEN 1 END), COUNT(failed_at), \
             MIN(CASE WHEN failed_at IS NULL THEN accessed_at END) \
             FROM obligation WHERE completed_at IS NULL",
        ))
        .await?;
    let Some(row) = row else {
        return Ok(Backlog::default());
    };
    let count = |i| -> Result<u64> {
        let n: i64 = row.try_get_by_index(i).map_err(AccessError::Database)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(Backlog {
        pending: count(0)?,
        failed: count(1)?,
        oldest_pending_at: row.try_get_by_index(2).map_err(AccessError::Database)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_from_its_first_step_up_to_its_cap() {
        let p = RetryPolicy::default();
        let secs = |d: Duration| d.as_secs();
        let backoff: Vec<_> = (1..=10).map(|n| secs(p.backoff(n))).collect();
        assert_eq!(
            backoff,
            [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
        );
        let deferral: Vec<_> = (1..=6).map(|n| secs(p.deferral(n))).collect();
        assert_eq!(deferral, [5, 10, 20, 40, 60, 60]);
        assert_eq!(p.backoff(i32::MAX), p.backoff_max, "no overflow");
        assert_eq!(p.backoff(0), p.backoff_first);
    }

    #[test]
    fn stored_errors_are_one_bounded_line_without_numbers_that_could_be_personal() {
        assert_eq!(
            sanitise("notifications: NOT_FOUND: no flag for 943 476 5919\nnext"),
            "notifications: NOT_FOUND: no flag for [redacted] next"
        );
        assert_eq!(sanitise("call 020-7946-0958 now"), "call [redacted] now");
        assert_eq!(sanitise("+44 20 7946 0958"), "+[redacted]");
        assert_eq!(
            sanitise("attendance: DEADLINE_EXCEEDED after 10 s, 3 tries"),
            "attendance: DEADLINE_EXCEEDED after 10 s, 3 tries",
            "short numbers are kept"
        );
        assert_eq!(sanitise("evil\u{202E}text\u{1b}[31m"), "evil text [31m");
        let long = sanitise(&"é".repeat(500));
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS);
        assert!(long.ends_with('…'));
        assert_eq!(sanitise(""), "");
    }
}
