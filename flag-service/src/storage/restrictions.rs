//! Restrictions (sensitive records) and inactive numbers: each notifies, in its own
//! transaction, the LAs holding a visible flag on the number.

use super::begin_write;
use super::flags::visible_on;
use super::outbox::{self, Appended, Event};
use crate::entities::{inactive_number, restriction};
use crate::error::{RegistryError, Result};
use crate::flag::Administrator;
use chrono::{DateTime, Utc};
use cpis_proto::gateway::NotificationKind;
use platform::domain::{NhsNumber, england_date};
use sea_orm::TryInsertResult;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter,
};
use std::collections::HashSet;

/// Restricts `nhs_number`, or updates the reason of a restriction already set (notifying no one
/// again). Returns the restriction as stored and what was notified.
pub async fn set(
    db: &DatabaseConnection,
    nhs_number: &NhsNumber,
    reason: &str,
    by: &Administrator,
    now: DateTime<Utc>,
) -> Result<(restriction::Model, Appended)> {
    let event = Event::administration(NotificationKind::Restricted, by, None, now);
    let number = nhs_number.as_str();
    let txn = begin_write(db).await?;
    let inserted = restriction::Entity::insert(restriction::ActiveModel {
        nhs_number: Set(number.to_owned()),
        reason: Set(reason.to_owned()),
        set_at: Set(now),
        set_by: Set(by.user_id.clone()),
    })
    .on_conflict_do_nothing_on([restriction::Column::NhsNumber])
    .exec_without_returning(&txn)
    .await?;
    let appended = if is_new(inserted) {
        notify_holders(&txn, nhs_number, &event).await?
    } else {
        restriction::Entity::update_many()
            .col_expr(restriction::Column::Reason, Expr::value(reason))
            .filter(restriction::Column::NhsNumber.eq(number))
            .exec(&txn)
            .await?;
        Appended::default()
    };
    let stored = restriction::Entity::find_by_id(number.to_owned())
        .one(&txn)
        .await?
        .ok_or_else(|| RegistryError::Corrupt("restriction vanished".into()))?;
    txn.commit().await?;
    Ok((stored, appended))
}

/// Lifts a restriction; `NotRestricted` when there was none.
pub async fn clear(db: &DatabaseConnection, nhs_number: &NhsNumber) -> Result<()> {
    let deleted = restriction::Entity::delete_many()
        .filter(restriction::Column::NhsNumber.eq(nhs_number.as_str()))
        .exec(db)
        .await?;
    if deleted.rows_affected == 0 {
        Err(RegistryError::NotRestricted)
    } else {
        Ok(())
    }
}

/// The restricted numbers among `numbers`, as stored: compared as stored, so no restriction
/// can be missed for want of parsing.
pub async fn restricted_among(
    db: &impl ConnectionTrait,
    numbers: &[NhsNumber],
) -> Result<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in numbers.chunks(super::NUMBERS_PER_QUERY) {
        found.extend(
            restriction::Entity::find()
                .filter(restriction::Column::NhsNumber.is_in(chunk.iter().map(|n| n.as_str())))
                .all(db)
                .await?
                .into_iter()
                .map(|r| r.nhs_number),
        );
    }
    Ok(found)
}

/// Marks a number inactive once; the first marking notifies the holders of visible flags.
pub async fn mark_inactive(
    db: &DatabaseConnection,
    nhs_number: &NhsNumber,
    superseded_by: Option<&NhsNumber>,
    by: &Administrator,
    now: DateTime<Utc>,
) -> Result<Appended> {
    let event = Event::administration(NotificationKind::NhsNumberInactive, by, superseded_by, now);
    let txn = begin_write(db).await?;
    let inserted = inactive_number::Entity::insert(inactive_number::ActiveModel {
        nhs_number: Set(nhs_number.as_str().to_owned()),
        superseded_by: Set(event.superseded_by.clone()),
        marked_at: Set(now),
        marked_by: Set(by.user_id.clone()),
    })
    .on_conflict_do_nothing_on([inactive_number::Column::NhsNumber])
    .exec_without_returning(&txn)
    .await?;
    let appended = if is_new(inserted) {
        notify_holders(&txn, nhs_number, &event).await?
    } else {
        Appended::default()
    };
    txn.commit().await?;
    Ok(appended)
}

fn is_new(inserted: TryInsertResult<u64>) -> bool {
    matches!(inserted, TryInsertResult::Inserted(n) if n > 0)
}

/// Tells each LA holding a flag visible today on the number of `event`.
async fn notify_holders(
    txn: &DatabaseTransaction,
    nhs_number: &NhsNumber,
    event: &Event,
) -> Result<Appended> {
    let flags = visible_on(txn, nhs_number, england_date(event.at)).await?;
    outbox::append(txn, &flags, event).await
}
