//! `ListAuditEvents`: filters and pagination over the log, oldest first.

use crate::entities::audit_record;
use crate::pagination;
use chrono::{DateTime, Utc};
use cpis_proto::gateway::{
    AuditEvent, AuditOutcome, ListAuditEventsRequest, ListAuditEventsResponse,
};
use platform::Result;
use platform::domain::{AccessKind, from_timestamp, to_timestamp};
use platform::error::Violations;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

pub const OUTCOME_ALLOWED: &str = "ALLOWED";
pub const OUTCOME_DENIED: &str = "DENIED";

struct Filters {
    nhs_number: Option<String>,
    user_id: Option<String>,
    ods_code: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
}

fn micros(ts: &prost_types::Timestamp, v: &mut Violations, field: &str) -> Option<i64> {
    match from_timestamp(ts) {
        Some(t) => Some(t.timestamp_micros()),
        None => {
            v.add(field, "is not a valid instant");
            None
        }
    }
}

pub fn instant_of(micros: i64) -> prost_types::Timestamp {
    to_timestamp(DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default())
}

pub fn to_event(row: audit_record::Model) -> AuditEvent {
    let access_kind = AccessKind::parse(&row.access_kind)
        .map(i32::from)
        .unwrap_or_default();
    let outcome = match row.outcome.as_str() {
        OUTCOME_ALLOWED => AuditOutcome::Allowed,
        OUTCOME_DENIED => AuditOutcome::Denied,
        _ => AuditOutcome::Unspecified,
    };
    AuditEvent {
        sequence: row.sequence as u64,
        recorded_at: Some(instant_of(row.recorded_at)),
        user_id: row.user_id,
        role_code: row.role_code,
        ods_code: row.ods_code,
        site_ods_code: row.site_ods_code,
        nhs_number: row.nhs_number,
        action: row.action,
        access_kind,
        outcome: outcome as i32,
        reason: row.reason,
        request_id: row.request_id,
        trace_id: row.trace_id,
        lookup_id: row.lookup_id,
        hash: row.hash,
    }
}

pub async fn list(
    db: &DatabaseConnection,
    request: ListAuditEventsRequest,
) -> Result<ListAuditEventsResponse> {
    let mut v = Violations::new();
    let nhs_number = (!request.nhs_number.is_empty())
        .then(|| v.nhs_number("nhs_number", &request.nhs_number))
        .flatten()
        .map(|n| n.as_str().to_owned());
    let ods_code = (!request.ods_code.is_empty())
        .then(|| v.ods_code("ods_code", &request.ods_code))
        .flatten()
        .map(|o| o.as_str().to_owned());
    v.max_len("user_id", &request.user_id, 255);
    let start = request
        .start_time
        .as_ref()
        .and_then(|t| micros(t, &mut v, "start_time"));
    let end = request
        .end_time
        .as_ref()
        .and_then(|t| micros(t, &mut v, "end_time"));
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        v.add("end_time", "must not be before start_time");
    }
    let size = pagination::page_size(&mut v, "page_size", request.page_size);
    let filters = Filters {
        nhs_number,
        user_id: (!request.user_id.is_empty()).then(|| request.user_id.clone()),
        ods_code,
        start,
        end,
    };
    let filter_key = format!(
        "audit{:?}",
        (
            &filters.nhs_number,
            &filters.user_id,
            &filters.ods_code,
            filters.start,
            filters.end
        )
    );
    let position = pagination::decode(&mut v, "page_token", &request.page_token, &filter_key);
    let after = match position.as_deref() {
        None | Some([]) => 0,
        Some(bytes) => match <[u8; 8]>::try_from(bytes) {
            Ok(b) => i64::from_be_bytes(b),
            Err(_) => {
                v.add("page_token", "is malformed");
                0
            }
        },
    };
    v.finish()?;

    let mut query = audit_record::Entity::find().filter(audit_record::Column::Sequence.gt(after));
    if let Some(n) = &filters.nhs_number {
        query = query.filter(audit_record::Column::NhsNumber.eq(n.as_str()));
    }
    if let Some(u) = &filters.user_id {
        query = query.filter(audit_record::Column::UserId.eq(u.as_str()));
    }
    if let Some(o) = &filters.ods_code {
        query = query.filter(audit_record::Column::OdsCode.eq(o.as_str()));
    }
    if let Some(s) = filters.start {
        query = query.filter(audit_record::Column::RecordedAt.gte(s));
    }
    if let Some(e) = filters.end {
        query = query.filter(audit_record::Column::RecordedAt.lt(e));
    }
    let mut rows = query
        .order_by_asc(audit_record::Column::Sequence)
        .limit(size + 1)
        .all(db)
        .await?;
    let more = rows.len() as u64 > size;
    rows.truncate(size as usize);
    let next_page_token = match (more, rows.last()) {
        (true, Some(last)) => pagination::encode(&filter_key, &last.sequence.to_be_bytes()),
        _ => String::new(),
    };
    Ok(ListAuditEventsResponse {
        events: rows.into_iter().map(to_event).collect(),
        next_page_token,
    })
}
