//! The organisations registry: who takes part, as what, and whether onboarded.

use super::now_micros;
use crate::audit::list::instant_of;
use crate::entities::organisation;
use crate::pagination;
use crate::rules::{OrganisationKind, OrganisationStanding};
use cpis_proto::gateway::{
    ListOrganisationsRequest, ListOrganisationsResponse, Organisation, UpsertOrganisationRequest,
};
use platform::Result;
use platform::error::Violations;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

pub const MAX_NAME_CHARS: usize = 200;

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

pub async fn upsert(
    db: &DatabaseConnection,
    request: UpsertOrganisationRequest,
) -> Result<Organisation> {
    let mut v = Violations::new();
    let ods = v.ods_code("ods_code", &request.ods_code);
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        v.add("name", "must be 1 to 200 characters");
    }
    let kind = OrganisationKind::from_wire(request.kind);
    if kind.is_none() {
        v.add(
            "kind",
            "must be ORGANISATION_KIND_LOCAL_AUTHORITY or ORGANISATION_KIND_HEALTH",
        );
    }
    v.finish()?;
    let (Some(ods), Some(kind)) = (ods, kind) else {
        return Err(platform::Error::internal("validated fields missing"));
    };
    let now = now_micros();
    let row = organisation::Model {
        ods_code: ods.as_str().to_owned(),
        name: name.to_owned(),
        kind: kind.as_str().to_owned(),
        onboarded: request.onboarded,
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

pub async fn list(
    db: &DatabaseConnection,
    request: ListOrganisationsRequest,
) -> Result<ListOrganisationsResponse> {
    let page = pagination::KeyPage::parse("organisations", request.page_size, &request.page_token)?;
    let rows = organisation::Entity::find()
        .filter(organisation::Column::OdsCode.gt(page.after.clone()))
        .order_by_asc(organisation::Column::OdsCode)
        .limit(page.limit())
        .all(db)
        .await?;
    let (rows, next_page_token) = page.finish(rows, |row| &row.ods_code);
    Ok(ListOrganisationsResponse {
        organisations: rows.into_iter().map(to_wire).collect(),
        next_page_token,
    })
}
