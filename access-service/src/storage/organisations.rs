//! The organisations registry: who takes part, as what, and whether onboarded.

use super::now_micros;
use crate::audit::list::instant_of;
use crate::entities::organisation;
use crate::rules::{OrganisationKind, OrganisationStanding};
use cpis_proto::gateway::{ListOrganisationsResponse, Organisation};
use platform::Result;
use platform::pagination::Page;
use platform::requests::OrganisationUpsert;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

/// The rules' view of a registry row; a row with an unknown kind stands for nothing.
pub fn standing(row: &organisation::Model) -> Option<OrganisationStanding> {
    Some(OrganisationStanding {
        kind: OrganisationKind::parse(&row.kind)?,
        onboarded: row.onboarded,
    })
}

pub fn to_wire(row: organisation::Model) -> Organisation {
    let kind = OrganisationKind::parse(&row.kind)
        .map(i32::from)
        .unwrap_or_default();
    Organisation {
        ods_code: row.ods_code,
        name: row.name,
        kind,
        onboarded: row.onboarded,
        create_time: Some(instant_of(row.created_at)),
        update_time: Some(instant_of(row.updated_at)),
    }
}

pub async fn find_many<C: ConnectionTrait>(
    db: &C,
    ods_codes: Vec<String>,
) -> Result<Vec<organisation::Model>, sea_orm::DbErr> {
    if ods_codes.is_empty() {
        return Ok(Vec::new());
    }
    organisation::Entity::find()
        .filter(organisation::Column::OdsCode.is_in(ods_codes))
        .all(db)
        .await
}

/// Registers the organisation, or replaces what is held for it (keeping its creation time).
/// `onboarded` comes apart: [`OrganisationUpsert`] leaves it out, as every value is valid.
pub async fn upsert(
    db: &DatabaseConnection,
    organisation: &OrganisationUpsert,
    onboarded: bool,
) -> Result<Organisation> {
    let now = now_micros();
    let ods = &organisation.ods_code;
    let row = organisation::Model {
        ods_code: ods.as_str().to_owned(),
        name: organisation.name.clone(),
        kind: organisation.kind.as_str().to_owned(),
        onboarded,
        created_at: now,
        updated_at: now,
    };
    organisation::Entity::insert(organisation::ActiveModel::from(row))
        .on_conflict(
            OnConflict::column(organisation::Column::OdsCode)
                .update_columns([
                    organisation::Column::Name,
                    organisation::Column::Kind,
                    organisation::Column::Onboarded,
                    organisation::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    let stored = organisation::Entity::find_by_id(ods.as_str().to_owned())
        .one(db)
        .await?
        .ok_or_else(|| platform::Error::internal("organisation vanished after upsert"))?;
    Ok(to_wire(stored))
}

/// One page of organisations in ODS-code order, after the code the page's token names.
pub async fn list(
    db: &DatabaseConnection,
    page: &Page<String>,
) -> Result<ListOrganisationsResponse> {
    let after = page.after.as_deref().unwrap_or_default();
    let rows = organisation::Entity::find()
        .filter(organisation::Column::OdsCode.gt(after))
        .order_by_asc(organisation::Column::OdsCode)
        .limit(page.limit())
        .all(db)
        .await?;
    let (rows, next_page_token) = page.finish(rows, |row| row.ods_code.clone());
    Ok(ListOrganisationsResponse {
        organisations: rows.into_iter().map(to_wire).collect(),
        next_page_token,
    })
}
