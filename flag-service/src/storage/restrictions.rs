//! Restrictions (sensitive records) and inactive numbers: each notifies, in its own
//! transaction, the LAs holding a visible flag on the number.

use super::begin_write;
use super::flags::live_on;
use super::outbox::{self, Appended, NewNotification};
use crate::entities::{inactive_number, restriction};
use crate::error::{RegistryError, Result};
use crate::flag::Flag;
use chrono::{DateTime, Utc};
use cpis_proto::gateway::NotificationKind;
use platform::domain::england_date;
use sea_orm::TryInsertResult;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter,
};

/// The administrator making a change, as the notifications name them.
#[derive(Clone, Debug)]
pub struct Administrator {
    pub user_id: String,
    pub role_code: String,
    pub ods_code: String,
    pub organisation_name: String,
}

/// Restricts `nhs_number`, or updates the reason of a restriction already set (notifying no one
/// again). Returns the restriction as stored and what was notified.
pub async fn set(
    db: &DatabaseConnection,
    nhs_number: &str,
    reason: &str,
    by: &Administrator,
    now: DateTime<Utc>,
) -> Result<(restriction::Model, Appended)> {
    let txn = begin_write(db).await?;
    let inserted = restriction::Entity::insert(restriction::ActiveModel {
        nhs_number: Set(nhs_number.to_owned()),
        reason: Set(reason.to_owned()),
        set_at: Set(now),
        set_by: Set(by.user_id.clone()),
    })
    .on_conflict_do_nothing_on([restriction::Column::NhsNumber])
    .exec_without_returning(&txn)
    .await?;
    let appended = if is_new(inserted) {
        notify_holders(&txn, nhs_number, NotificationKind::Restricted, "", by, now).await?
    } else {
        restriction::Entity::update_many()
            .col_expr(restriction::Column::Reason, Expr::value(reason))
            .filter(restriction::Column::NhsNumber.eq(nhs_number))
            .exec(&txn)
            .await?;
        Appended::default()
    };
    let stored = restriction::Entity::find_by_id(nhs_number.to_owned())
        .one(&txn)
        .await?
        .ok_or_else(|| RegistryError::Corrupt("restriction vanished".into()))?;
    txn.commit().await?;
    Ok((stored, appended))
}

/// Lifts a restriction; `NotRestricted` when there was none.
pub async fn clear(db: &DatabaseConnection, nhs_number: &str) -> Result<()> {
    let deleted = restriction::Entity::delete_many()
        .filter(restriction::Column::NhsNumber.eq(nhs_number))
        .exec(db)
        .await?;
    if deleted.rows_affected == 0 {
        Err(RegistryError::NotRestricted)
    } else {
        Ok(())
    }
}

/// The restricted numbers among `numbers`.
pub async fn restricted_among(
    db: &impl ConnectionTrait,
    numbers: &[String],
) -> Result<std::collections::HashSet<String>> {
    let mut found = std::collections::HashSet::new();
    for chunk in numbers.chunks(super::NUMBERS_PER_QUERY) {
        found.extend(
            restriction::Entity::find()
                .filter(restriction::Column::NhsNumber.is_in(chunk.iter().cloned()))
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
    nhs_number: &str,
    superseded_by: &str,
    by: &Administrator,
    now: DateTime<Utc>,
) -> Result<Appended> {
    let txn = begin_write(db).await?;
    let inserted = inactive_number::Entity::insert(inactive_number::ActiveModel {
        nhs_number: Set(nhs_number.to_owned()),
        superseded_by: Set(superseded_by.to_owned()),
        marked_at: Set(now),
        marked_by: Set(by.user_id.clone()),
    })
    .on_conflict_do_nothing_on([inactive_number::Column::NhsNumber])
    .exec_without_returning(&txn)
    .await?;
    let appended = if is_new(inserted) {
        notify_holders(
            &txn,
            nhs_number,
            NotificationKind::NhsNumberInactive,
            superseded_by,
            by,
            now,
        )
        .await?
    } else {
        Appended::default()
    };
    txn.commit().await?;
    Ok(appended)
}

fn is_new(inserted: TryInsertResult<u64>) -> bool {
    matches!(inserted, TryInsertResult::Inserted(n) if n > 0)
}

async fn notify_holders(
    txn: &DatabaseTransaction,
    nhs_number: &str,
    kind: NotificationKind,
    superseded_by: &str,
    by: &Administrator,
    now: DateTime<Utc>,
) -> Result<Appended> {
    let today = england_date(now);
    let notes = live_on(txn, &[nhs_number.to_owned()])
        .await?
        .iter()
        .filter_map(Flag::from_row)
        .filter(|f| f.dates.is_visible(today))
        .map(|f| NewNotification {
            la_ods_code: f.la_ods_code,
            kind,
            nhs_number: f.nhs_number,
            flag_type: f.dates.flag_type,
            flag_start: f.dates.start,
            accessed_at: now,
            user_id: by.user_id.clone(),
            role_code: by.role_code.clone(),
            ods_code: by.ods_code.clone(),
            organisation_name: by.organisation_name.clone(),
            setting_type: None,
            lookup_id: None,
            superseded_by: superseded_by.to_owned(),
        })
        .collect();
    outbox::append(txn, notes).await
}
