//! Unattended systems: a client certificate's SAN mapped to an organisation and the one
//! activity a system may hold, `CPIS_LA_MANAGE`.

use super::now_micros;
use crate::audit::list::instant_of;
use crate::entities::{organisation, system};
use crate::error::AccessError;
use cpis_proto::access::SystemIdentity;
use cpis_proto::gateway::{ListSystemsResponse, System};
use platform::Result;
use platform::domain::Activity;
use platform::pagination::Page;
use platform::requests::SystemRegistration;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use std::collections::BTreeSet;

/// The registered activities a system holds; unknown codes grant nothing.
pub fn activities(row: &system::Model) -> BTreeSet<Activity> {
    row.activities
        .split_whitespace()
        .filter_map(Activity::from_code)
        .collect()
}

fn activity_codes(row: &system::Model) -> Vec<String> {
    activities(row)
        .iter()
        .map(|a| a.code().to_owned())
        .collect()
}

fn to_wire(row: system::Model) -> System {
    System {
        activities: activity_codes(&row),
        san: row.san,
        ods_code: row.ods_code,
        create_time: Some(instant_of(row.created_at)),
    }
}

pub async fn find_many<C: ConnectionTrait>(
    db: &C,
    sans: Vec<String>,
) -> Result<Vec<system::Model>, sea_orm::DbErr> {
    if sans.is_empty() {
        return Ok(Vec::new());
    }
    system::Entity::find()
        .filter(system::Column::San.is_in(sans))
        .all(db)
        .await
}

/// Registers the system, or replaces its organisation and activities.
pub async fn register(db: &DatabaseConnection, system: &SystemRegistration) -> Result<System> {
    let row = system::Model {
        san: system.san.clone(),
        ods_code: system.ods_code.as_str().to_owned(),
        activities: system
            .activities
            .iter()
            .map(|a| a.code())
            .collect::<Vec<_>>()
            .join(" "),
        created_at: now_micros(),
    };
    system::Entity::insert(system::ActiveModel::from(row))
        .on_conflict(
            OnConflict::column(system::Column::San)
                .update_columns([system::Column::OdsCode, system::Column::Activities])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    let stored = system::Entity::find_by_id(system.san.clone())
        .one(db)
        .await?
        .ok_or_else(|| platform::Error::internal("system vanished after upsert"))?;
    Ok(to_wire(stored))
}

/// One page of systems in SAN order, after the SAN the page's token names.
pub async fn list(db: &DatabaseConnection, page: &Page<String>) -> Result<ListSystemsResponse> {
    let after = page.after.as_deref().unwrap_or_default();
    let rows = system::Entity::find()
        .filter(system::Column::San.gt(after))
        .order_by_asc(system::Column::San)
        .limit(page.limit())
        .all(db)
        .await?;
    let (rows, next_page_token) = page.finish(rows, |row| row.san.clone());
    Ok(ListSystemsResponse {
        systems: rows.into_iter().map(to_wire).collect(),
        next_page_token,
    })
}

/// Forgets the system `san` (validated by `platform::requests::remove_system`).
pub async fn remove(db: &DatabaseConnection, san: &str) -> Result<()> {
    let deleted = system::Entity::delete_by_id(san.to_owned())
        .exec(db)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(AccessError::SystemNotFound.into());
    }
    Ok(())
}

pub async fn resolve(db: &DatabaseConnection, san: &str) -> Result<SystemIdentity> {
    if san.is_empty() {
        return Err(platform::Error::invalid("san", "is required"));
    }
    let row = system::Entity::find_by_id(san.to_owned())
        .one(db)
        .await?
        .ok_or(AccessError::SystemNotFound)?;
    let organisation_name = organisation::Entity::find_by_id(row.ods_code.clone())
        .one(db)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    Ok(SystemIdentity {
        activities: activity_codes(&row),
        san: row.san,
        ods_code: row.ods_code,
        organisation_name,
    })
}
