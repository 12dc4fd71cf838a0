//! `ListAuditEvents`: the log filtered and paged, oldest first. The request is validated by
//! `platform::requests::list_audit_events`, the gateway's rule too.

use crate::entities::audit_record;
use chrono::{DateTime, Utc};
use cpis_proto::gateway::{AuditEvent, AuditOutcome, ListAuditEventsResponse, WatchDelivery};
use platform::Result;
use platform::domain::{AccessKind, to_timestamp};
use platform::requests::AuditPage;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

pub const OUTCOME_ALLOWED: &str = "ALLOWED";
pub const OUTCOME_DENIED: &str = "DENIED";
/// Not a decision: what an allowed watch relayed (AUDIT_OUTCOME_DELIVERED).
pub const OUTCOME_DELIVERED: &str = "DELIVERED";

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
        OUTCOME_DELIVERED => AuditOutcome::Delivered,
        _ => AuditOutcome::Unspecified,
    };
    let delivery = (row.delivered_count > 0).then_some(WatchDelivery {
        first_cursor: row.delivered_first as u64,
        last_cursor: row.delivered_last as u64,
        count: row.delivered_count as u64,
    });
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
        delivery,
        user_name: row.user_name,
    }
}

/// One page of the records matching `request`'s filters, after its token's sequence.
pub async fn list(db: &DatabaseConnection, request: &AuditPage) -> Result<ListAuditEventsResponse> {
    let AuditPage { filters, page } = request;
    let after = page.after.unwrap_or(0);
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
    let rows = query
        .order_by_asc(audit_record::Column::Sequence)
        .limit(page.limit())
        .all(db)
        .await?;
    let (rows, next_page_token) = page.finish(rows, |row| row.sequence);
    Ok(ListAuditEventsResponse {
        events: rows.into_iter().map(to_event).collect(),
        next_page_token,
    })
}
