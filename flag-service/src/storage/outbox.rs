//! The per-LA notification outbox. Cursors come from the LA's counter row, locked and advanced
//! in the writing transaction: a second writer for the same LA waits for the first to commit,
//! so cursors follow commit order with no gaps and a reader never sees N+1 before N.

use super::{ROWS_PER_STATEMENT, begin_write};
use crate::entities::{notification, outbox};
use crate::error::{RegistryError, Result};
use crate::flag::{Access, Administrator, Flag};
use chrono::{DateTime, NaiveDate, Utc};
use cpis_proto::gateway::{self, NotificationKind};
use platform::domain::{FlagType, NhsNumber, SettingType, to_timestamp};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use std::collections::{BTreeMap, HashSet};

/// What happened to a child, by whom, when and from where: what every notification of one
/// event shares. The event notifies each LA holding a visible flag on the child, one
/// notification per flag.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: NotificationKind,
    pub at: DateTime<Utc>,
    pub user_id: String,
    pub role_code: String,
    pub ods_code: String,
    pub organisation_name: String,
    pub setting_type: Option<SettingType>,
    /// ACCESS only: the lookup, the idempotency key with the flag.
    pub lookup_id: Option<String>,
    pub superseded_by: String,
}

impl Event {
    /// A lookup of the child.
    pub fn access(access: &Access) -> Event {
        Event {
            kind: NotificationKind::Access,
            at: access.accessed_at,
            user_id: access.user_id.clone(),
            role_code: access.role_code.clone(),
            ods_code: access.site_ods_code.clone(),
            organisation_name: access.organisation_name.clone(),
            setting_type: access.setting_type,
            lookup_id: Some(access.lookup_id.clone()),
            superseded_by: String::new(),
        }
    }

    /// An administrator's change to the child's number (restricted, or inactive and perhaps
    /// superseded).
    pub fn administration(
        kind: NotificationKind,
        by: &Administrator,
        superseded_by: Option<&NhsNumber>,
        at: DateTime<Utc>,
    ) -> Event {
        Event {
            kind,
            at,
            user_id: by.user_id.clone(),
            role_code: by.role_code.clone(),
            ods_code: by.ods_code.clone(),
            organisation_name: by.organisation_name.clone(),
            setting_type: None,
            lookup_id: None,
            superseded_by: superseded_by
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// What an append stored: how many notifications, and each LA's new last cursor (for waking
/// watchers once the transaction has committed).
#[derive(Clone, Debug, Default)]
pub struct Appended {
    pub stored: u32,
    pub heads: Vec<(String, u64)>,
}

/// Stores inside `txn` one notification of `event` per flag, for the flag's LA, skipping an
/// ACCESS notification already stored for the same (lookup, flag). LAs are locked in ODS code
/// order, so concurrent appends never deadlock.
pub async fn append(txn: &DatabaseTransaction, flags: &[Flag], event: &Event) -> Result<Appended> {
    let mut by_la: BTreeMap<&str, Vec<&Flag>> = BTreeMap::new();
    for flag in flags {
        by_la
            .entry(flag.la_ods_code.as_str())
            .or_default()
            .push(flag);
    }
    let mut appended = Appended::default();
    for (la, flags) in by_la {
        let last = lock_head(txn, la).await?;
        let fresh = without_repeats(txn, la, event, flags).await?;
        if fresh.is_empty() {
            continue;
        }
        let count = fresh.len() as i64;
        let rows: Vec<notification::ActiveModel> = fresh
            .into_iter()
            .zip(last + 1..)
            .map(|(flag, cursor)| row(flag, event, cursor))
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            notification::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(txn)
                .await?;
        }
        outbox::Entity::update_many()
            .col_expr(outbox::Column::LastCursor, Expr::value(last + count))
            .filter(outbox::Column::LaOdsCode.eq(la))
            .exec(txn)
            .await?;
        appended.stored += count as u32;
        appended.heads.push((la.to_owned(), (last + count) as u64));
    }
    Ok(appended)
}

/// Creates the LA's counter row if needed and locks it for the rest of the transaction;
/// returns the last cursor assigned.
async fn lock_head(txn: &DatabaseTransaction, la: &str) -> Result<i64> {
    outbox::Entity::insert(outbox::ActiveModel {
        la_ods_code: Set(la.to_owned()),
        last_cursor: Set(0),
        acknowledged_cursor: Set(0),
    })
    .on_conflict_do_nothing_on([outbox::Column::LaOdsCode])
    .exec_without_returning(txn)
    .await?;
    // A no-op update takes the row lock (FOR UPDATE is not SQLite; there the IMMEDIATE
    // transaction already holds the database's write lock).
    let locked = outbox::Entity::update_many()
        .col_expr(
            outbox::Column::LastCursor,
            Expr::col(outbox::Column::LastCursor),
        )
        .filter(outbox::Column::LaOdsCode.eq(la))
        .exec_with_returning(txn)
        .await?;
    locked
        .first()
        .map(|head| head.last_cursor)
        .ok_or_else(|| RegistryError::Corrupt(format!("outbox head of {la} vanished")))
}

/// The flags of `flags` the event has not yet notified `la` about: only a lookup is
/// idempotent (by lookup and flag), so any other event notifies every flag.
async fn without_repeats<'f>(
    txn: &DatabaseTransaction,
    la: &str,
    event: &Event,
    flags: Vec<&'f Flag>,
) -> Result<Vec<&'f Flag>> {
    let Some(lookup) = &event.lookup_id else {
        return Ok(flags);
    };
    let mut seen: HashSet<(String, String, NaiveDate)> = notification::Entity::find()
        .filter(notification::Column::LaOdsCode.eq(la))
        .filter(notification::Column::LookupId.eq(lookup.as_str()))
        .all(txn)
        .await?
        .into_iter()
        .map(|n| (n.nhs_number, n.flag_type, n.flag_start_date))
        .collect();
    Ok(flags
        .into_iter()
        .filter(|f| {
            seen.insert((
                f.nhs_number.as_str().to_owned(),
                f.dates.flag_type.as_str().to_owned(),
                f.dates.start,
            ))
        })
        .collect())
}

/// The one place a notification is built: `event`, told to the LA holding `flag`.
fn row(flag: &Flag, event: &Event, cursor: i64) -> notification::ActiveModel {
    notification::ActiveModel {
        id: NotSet,
        la_ods_code: Set(flag.la_ods_code.clone()),
        cursor: Set(cursor),
        kind: Set(kind_name(event.kind).to_owned()),
        nhs_number: Set(flag.nhs_number.as_str().to_owned()),
        flag_type: Set(flag.dates.flag_type.as_str().to_owned()),
        flag_start_date: Set(flag.dates.start),
        accessed_at: Set(event.at),
        user_id: Set(event.user_id.clone()),
        role_code: Set(event.role_code.clone()),
        ods_code: Set(event.ods_code.clone()),
        organisation_name: Set(event.organisation_name.clone()),
        setting_type: Set(event
            .setting_type
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()),
        lookup_id: Set(event.lookup_id.clone()),
        superseded_by: Set(event.superseded_by.clone()),
    }
}

fn kind_name(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Access => "ACCESS",
        NotificationKind::NhsNumberInactive => "NHS_NUMBER_INACTIVE",
        NotificationKind::Restricted => "RESTRICTED",
        NotificationKind::Unspecified => "UNSPECIFIED",
    }
}

fn kind_from_name(name: &str) -> NotificationKind {
    match name {
        "ACCESS" => NotificationKind::Access,
        "NHS_NUMBER_INACTIVE" => NotificationKind::NhsNumberInactive,
        "RESTRICTED" => NotificationKind::Restricted,
        _ => NotificationKind::Unspecified,
    }
}

/// The wire form of a stored notification.
pub fn to_proto(n: &notification::Model) -> gateway::Notification {
    gateway::Notification {
        cursor: n.cursor as u64,
        nhs_number: n.nhs_number.clone(),
        flag_type: FlagType::parse(&n.flag_type).map(i32::from).unwrap_or(0),
        accessed_at: Some(to_timestamp(n.accessed_at)),
        user_id: n.user_id.clone(),
        role_code: n.role_code.clone(),
        ods_code: n.ods_code.clone(),
        organisation_name: n.organisation_name.clone(),
        setting_type: SettingType::parse(&n.setting_type)
            .map(i32::from)
            .unwrap_or(0),
        lookup_id: n.lookup_id.clone().unwrap_or_default(),
        kind: kind_from_name(&n.kind).into(),
        superseded_by: n.superseded_by.clone(),
    }
}

/// The LA's (last assigned, acknowledged) cursors; (0, 0) before its first notification.
pub async fn head(db: &impl ConnectionTrait, la: &str) -> Result<(u64, u64)> {
    Ok(outbox::Entity::find_by_id(la.to_owned())
        .one(db)
        .await?
        .map(|h| (h.last_cursor as u64, h.acknowledged_cursor as u64))
        .unwrap_or((0, 0)))
}

/// Every LA's last assigned cursor: one query, for the process's one watch poller.
pub async fn heads(db: &impl ConnectionTrait) -> Result<Vec<(String, u64)>> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::LastCursor.gt(0))
        .all(db)
        .await?
        .into_iter()
        .map(|h| (h.la_ods_code, h.last_cursor as u64))
        .collect())
}

/// Up to `limit` of the LA's notifications with a cursor above `after`, in cursor order.
pub async fn after(
    db: &impl ConnectionTrait,
    la: &str,
    after: u64,
    limit: u64,
) -> Result<Vec<notification::Model>> {
    Ok(notification::Entity::find()
        .filter(notification::Column::LaOdsCode.eq(la))
        .filter(notification::Column::Cursor.gt(after as i64))
        .order_by_asc(notification::Column::Cursor)
        .limit(limit)
        .all(db)
        .await?)
}

/// Moves the acknowledged cursor forward (never back); returns (acknowledged, backlog).
pub async fn acknowledge(db: &DatabaseConnection, la: &str, up_to: u64) -> Result<(u64, u64)> {
    let txn = begin_write(db).await?;
    let (last, acknowledged) = head(&txn, la).await?;
    if up_to > last {
        return Err(RegistryError::CursorBeyondHead { head: last });
    }
    if up_to <= acknowledged {
        return Ok((acknowledged, last - acknowledged));
    }
    // The guard keeps a concurrent, larger acknowledgement from being undone.
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::AcknowledgedCursor,
            Expr::value(up_to as i64),
        )
        .filter(outbox::Column::LaOdsCode.eq(la))
        .filter(outbox::Column::AcknowledgedCursor.lt(up_to as i64))
        .exec(&txn)
        .await?;
    let (last, acknowledged) = head(&txn, la).await?;
    txn.commit().await?;
    Ok((acknowledged, last - acknowledged))
}

/// Every LA that has had a notification, in ODS code order, with its unacknowledged count
/// (cursors have no gaps, so the count is the distance between the two cursors).
pub async fn backlogs(db: &DatabaseConnection) -> Result<Vec<(String, u64)>> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::LastCursor.gt(0))
        .order_by_asc(outbox::Column::LaOdsCode)
        .all(db)
        .await?
        .into_iter()
        .map(|h| {
            let backlog = h.last_cursor.saturating_sub(h.acknowledged_cursor).max(0) as u64;
            (h.la_ods_code, backlog)
        })
        .collect())
}
