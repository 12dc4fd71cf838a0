//! Unattended systems: a client certificate's SAN mapped to an organisation and the one
//! activity a system may hold, `CPIS_LA_MANAGE`.

use super::now_micros;
use crate::audit::list::instant_of;
use crate::entities::{organisation, system};
use crate::error::AccessError;
use crate::pagination;
use cpis_proto::access::SystemIdentity;
use cpis_proto::gateway::{ListSystemsRequest, ListSystemsResponse, RegisterSystemRequest, System};
use platform::Result;
use platform::domain::Activity;
use platform::error::Violations;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use std::collections::BTreeSet;

pub const MAX_SAN_LEN: usize = 255;

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

pub async fn register(db: &DatabaseConnection, request: RegisterSystemRequest) -> Result<System> {
    let mut v = Violations::new();
    if request.san.is_empty() || request.san.len() > MAX_SAN_LEN {
        v.add("san", "must be 1 to 255 characters");
    }
    let ods = v.ods_code("ods_code", &request.ods_code);
    let mut granted = BTreeSet::new();
    for code in &request.activities {
        match Activity::from_code(code) {
            Some(Activity::LaManage) => {
                granted.insert(Activity::LaManage);
            }
            _ => {
                v.add(
                    "activities",
                    "only CPIS_LA_MANAGE may be granted to a system",
                );
                break;
            }
        }
    }
    v.finish()?;
    let Some(ods) = ods else {
        return Err(platform::Error::internal("validated fields missing"));
    };
    let row = system::Model {
        san: request.san.clone(),
        ods_code: ods.as_str().to_owned(),
        activities: granted
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
    let stored = system::Entity::find_by_id(request.san)
        .one(db)
        .await?
        .ok_or_else(|| platform::Error::internal("system vanished after upsert"))?;
    Ok(to_wire(stored))
}

pub async fn list(
    db: &DatabaseConnection,
    request: ListSystemsRequest,
) -> Result<ListSystemsResponse> {
    let page = pagination::KeyPage::parse("systems", request.page_size, &request.page_token)?;
    let rows = system::Entity::find()
        .filter(system::Column::San.gt(page.after.clone()))
        .order_by_asc(system::Column::San)
        .limit(page.limit())
        .all(db)
        .await?;
    let (rows, next_page_token) = page.finish(rows, |row| &row.san);
    Ok(ListSystemsResponse {
        systems: rows.into_iter().map(to_wire).collect(),
        next_page_token,
    })
}

pub async fn remove(db: &DatabaseConnection, san: &str) -> Result<()> {
    if san.is_empty() {
        return Err(platform::Error::invalid("san", "is required"));
    }
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
