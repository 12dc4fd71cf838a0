//! Flags and their history: reads by number, the LA's own list, end and delete.

use super::outbox::{self, Appended, Event};
use super::{NUMBERS_PER_QUERY, begin_write};
use crate::entities::{flag, flag_history};
use crate::error::{RegistryError, Result};
use crate::flag::{Access, Flag, FlagKey, visible};
use chrono::{DateTime, NaiveDate, Utc};
use platform::domain::{NhsNumber, england_date};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

/// The changeable part of a flag, as history records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagState {
    pub la_name: String,
    pub end: Option<NaiveDate>,
    pub due: Option<NaiveDate>,
    pub emergency_phone: String,
    pub office_hours_phone: String,
    pub email: String,
    pub deleted: bool,
}

impl FlagState {
    pub fn of(row: &flag::Model) -> FlagState {
        FlagState {
            la_name: row.la_name.clone(),
            end: row.end_date,
            due: row.due_date,
            emergency_phone: row.emergency_phone.clone(),
            office_hours_phone: row.office_hours_phone.clone(),
            email: row.email.clone(),
            deleted: row.deleted,
        }
    }

    pub fn to_json(&self) -> String {
        let date = |d: Option<NaiveDate>| d.map(|d| d.to_string());
        serde_json::json!({
            "la_name": self.la_name,
            "end_date": date(self.end),
            "due_date": date(self.due),
            "emergency_phone": self.emergency_phone,
            "office_hours_phone": self.office_hours_phone,
            "email": self.email,
            "deleted": self.deleted,
        })
        .to_string()
    }
}

/// Who changed a flag and through what.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    pub la: &'a str,
    pub actor: &'a str,
    pub source: &'a str,
    pub at: DateTime<Utc>,
}

impl Change<'_> {
    pub fn history(
        &self,
        key: &FlagKey,
        kind: &str,
        before: Option<&FlagState>,
        after: &FlagState,
    ) -> flag_history::ActiveModel {
        flag_history::ActiveModel {
            id: NotSet,
            la_ods_code: Set(self.la.to_owned()),
            nhs_number: Set(key.nhs_number.as_str().to_owned()),
            flag_type: Set(key.flag_type.as_str().to_owned()),
            start_date: Set(key.start),
            change: Set(kind.to_owned()),
            before: Set(before.map(FlagState::to_json)),
            after: Set(Some(after.to_json())),
            actor: Set(self.actor.to_owned()),
            source: Set(self.source.to_owned()),
            changed_at: Set(self.at),
        }
    }

    /// The row to upsert for `key` in `state`.
    pub fn row(&self, key: &FlagKey, state: &FlagState) -> flag::ActiveModel {
        flag::ActiveModel {
            id: NotSet,
            la_ods_code: Set(self.la.to_owned()),
            la_name: Set(state.la_name.clone()),
            nhs_number: Set(key.nhs_number.as_str().to_owned()),
            flag_type: Set(key.flag_type.as_str().to_owned()),
            start_date: Set(key.start),
            end_date: Set(state.end),
            due_date: Set(state.due),
            emergency_phone: Set(state.emergency_phone.clone()),
            office_hours_phone: Set(state.office_hours_phone.clone()),
            email: Set(state.email.clone()),
            deleted: Set(state.deleted),
            deleted_at: Set(state.deleted.then_some(self.at)),
            created_at: Set(self.at),
            updated_at: Set(self.at),
        }
    }
}

/// Upserting on the identity keeps `created_at` and replaces everything else.
pub fn upsert_on_identity() -> OnConflict {
    OnConflict::columns([
        flag::Column::LaOdsCode,
        flag::Column::NhsNumber,
        flag::Column::FlagType,
        flag::Column::StartDate,
    ])
    .update_columns([
        flag::Column::LaName,
        flag::Column::EndDate,
        flag::Column::DueDate,
        flag::Column::EmergencyPhone,
        flag::Column::OfficeHoursPhone,
        flag::Column::Email,
        flag::Column::Deleted,
        flag::Column::DeletedAt,
        flag::Column::UpdatedAt,
    ])
    .to_owned()
}

/// Every flag not deleted on these numbers, from every LA.
pub async fn live_on(db: &impl ConnectionTrait, numbers: &[NhsNumber]) -> Result<Vec<Flag>> {
    let mut flags = Vec::new();
    for chunk in numbers.chunks(NUMBERS_PER_QUERY) {
        let rows = flag::Entity::find()
            .filter(flag::Column::NhsNumber.is_in(chunk.iter().map(|n| n.as_str())))
            .filter(flag::Column::Deleted.eq(false))
            .order_by_asc(flag::Column::Id)
            .all(db)
            .await?;
        flags.extend(rows.iter().filter_map(Flag::from_row));
    }
    Ok(flags)
}

/// The flags visible on `today` on one number, from every LA: the flags an event on the
/// number notifies the LAs of.
pub async fn visible_on(
    db: &impl ConnectionTrait,
    nhs_number: &NhsNumber,
    today: NaiveDate,
) -> Result<Vec<Flag>> {
    let live = live_on(db, std::slice::from_ref(nhs_number)).await?;
    Ok(visible(&live, today).cloned().collect())
}

async fn own(db: &impl ConnectionTrait, la: &str, key: &FlagKey) -> Result<Option<flag::Model>> {
    Ok(flag::Entity::find()
        .filter(flag::Column::LaOdsCode.eq(la))
        .filter(flag::Column::NhsNumber.eq(key.nhs_number.as_str()))
        .filter(flag::Column::FlagType.eq(key.flag_type.as_str()))
        .filter(flag::Column::StartDate.eq(key.start))
        .filter(flag::Column::Deleted.eq(false))
        .one(db)
        .await?)
}

/// Sets the end date of one of the LA's flags; the same end date again changes nothing.
pub async fn end(
    db: &DatabaseConnection,
    change: &Change<'_>,
    key: &FlagKey,
    end_date: NaiveDate,
) -> Result<flag::Model> {
    let txn = begin_write(db).await?;
    let row = own(&txn, change.la, key)
        .await?
        .ok_or(RegistryError::FlagNotFound)?;
    if row.end_date == Some(end_date) {
        txn.rollback().await?;
        return Ok(row);
    }
    let before = FlagState::of(&row);
    let after = FlagState {
        end: Some(end_date),
        ..before.clone()
    };
    flag::Entity::update_many()
        .col_expr(flag::Column::EndDate, end_date.into())
        .col_expr(flag::Column::UpdatedAt, change.at.into())
        .filter(flag::Column::Id.eq(row.id))
        .exec(&txn)
        .await?;
    flag_history::Entity::insert(change.history(key, "ended", Some(&before), &after))
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(flag::Model {
        end_date: Some(end_date),
        updated_at: change.at,
        ..row
    })
}

/// Marks one of the LA's flags deleted (kept for the audit trail).
pub async fn delete(db: &DatabaseConnection, change: &Change<'_>, key: &FlagKey) -> Result<()> {
    let txn = begin_write(db).await?;
    let row = own(&txn, change.la, key)
        .await?
        .ok_or(RegistryError::FlagNotFound)?;
    let before = FlagState::of(&row);
    let after = FlagState {
        deleted: true,
        ..before.clone()
    };
    flag::Entity::update_many()
        .col_expr(flag::Column::Deleted, true.into())
        .col_expr(flag::Column::DeletedAt, Some(change.at).into())
        .col_expr(flag::Column::UpdatedAt, change.at.into())
        .filter(flag::Column::Id.eq(row.id))
        .exec(&txn)
        .await?;
    flag_history::Entity::insert(change.history(key, "deleted", Some(&before), &after))
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// One page of the LA's flags (not deleted), in a stable order: by row id after `after_id`.
pub async fn page(
    db: &DatabaseConnection,
    la: &str,
    after_id: i64,
    limit: u64,
) -> Result<Vec<flag::Model>> {
    Ok(flag::Entity::find()
        .filter(flag::Column::LaOdsCode.eq(la))
        .filter(flag::Column::Deleted.eq(false))
        .filter(flag::Column::Id.gt(after_id))
        .order_by_asc(flag::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The history of one LA's flags on a number, oldest first (for tests and investigations).
pub async fn history_of(
    db: &DatabaseConnection,
    la: &str,
    nhs_number: &str,
) -> Result<Vec<flag_history::Model>> {
    Ok(flag_history::Entity::find()
        .filter(flag_history::Column::LaOdsCode.eq(la))
        .filter(flag_history::Column::NhsNumber.eq(nhs_number))
        .order_by_asc(flag_history::Column::Id)
        .all(db)
        .await?)
}

/// A notifying read: the flags on `nhs_number` visible at `as_of` and, in the same
/// transaction, one ACCESS notification per flag for the lookup `access`, deduplicated by
/// (lookup, flag). Returns those flags and what was stored.
pub async fn read_and_notify(
    db: &DatabaseConnection,
    nhs_number: &NhsNumber,
    as_of: DateTime<Utc>,
    access: &Access,
) -> Result<(Vec<Flag>, Appended)> {
    let today = england_date(as_of);
    // Nearly every child has no visible flag: answer those without taking the write lock. A
    // flag committed after this read is one the lookup came too early to see, in the answer
    // and the notifications alike.
    let first_look = visible_on(db, nhs_number, today).await?;
    if first_look.is_empty() {
        return Ok((first_look, Appended::default()));
    }
    let txn = begin_write(db).await?;
    let flags = visible_on(&txn, nhs_number, today).await?;
    let appended = outbox::append(&txn, &flags, &Event::access(access)).await?;
    txn.commit().await?;
    Ok((flags, appended))
}
