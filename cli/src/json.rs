//! Answers as JSON for scripts (`--json`): proto field names, enums by their full names,
//! instants in RFC 3339 (UTC), bytes in base64, numbers as JSON numbers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cpis_proto::gateway as pb;
use serde_json::{Value, json};

pub fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(platform::domain::from_timestamp)
        .map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        })
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> Value {
    E::try_from(value).map_or(Value::from(value), |e| Value::from(name(&e)))
}

pub fn flag_type(value: i32) -> Value {
    enum_name(value, pb::FlagType::as_str_name)
}

pub fn setting_type(value: i32) -> Value {
    enum_name(value, pb::SettingType::as_str_name)
}

pub fn bytes(value: &[u8]) -> Value {
    Value::from(STANDARD.encode(value))
}

pub fn flag(f: &pb::Flag) -> Value {
    let la = f.local_authority.clone().unwrap_or_default();
    json!({
        "nhs_number": f.nhs_number,
        "flag_type": flag_type(f.flag_type),
        "start_date": f.start_date,
        "end_date": f.end_date,
        "due_date": f.due_date,
        "active": f.active,
        "local_authority": {
            "ods_code": la.ods_code,
            "name": la.name,
            "emergency_phone": la.emergency_phone,
            "office_hours_phone": la.office_hours_phone,
            "email": la.email,
        },
    })
}

pub fn lookup(r: &pb::LookupChildResponse) -> Value {
    let a = r.attendance.clone().unwrap_or_default();
    json!({
        "nhs_number": r.nhs_number,
        "flagged": r.flagged,
        "flags": r.flags.iter().map(flag).collect::<Vec<_>>(),
        "attendance": {
            "available": a.available,
            "last_30_days": a.last_30_days,
            "last_90_days": a.last_90_days,
            "last_365_days": a.last_365_days,
            "recent": a.recent.iter().map(|x| json!({
                "attended_at": timestamp(x.attended_at.as_ref()),
                "ods_code": x.ods_code,
                "organisation_name": x.organisation_name,
                "setting_type": setting_type(x.setting_type),
                "role_code": x.role_code,
            })).collect::<Vec<_>>(),
        },
        "lookup_id": r.lookup_id,
        "looked_up_at": timestamp(r.looked_up_at.as_ref()),
    })
}

pub fn upload(r: &pb::UploadFlagsResponse, lines: &[u64]) -> Value {
    json!({
        "upload_id": r.upload_id,
        "status": enum_name(r.status, pb::UploadStatus::as_str_name),
        "accepted": r.accepted,
        "rejected": r.rejected,
        "results": r.results.iter().map(|x| json!({
            "index": x.index,
            "line": lines.get(x.index as usize),
            "nhs_number": x.nhs_number,
            "code": enum_name(x.code, pb::RecordCode::as_str_name),
            "message": x.message,
        })).collect::<Vec<_>>(),
    })
}

pub fn notification(n: &pb::Notification) -> Value {
    json!({
        "cursor": n.cursor,
        "kind": enum_name(n.kind, pb::NotificationKind::as_str_name),
        "nhs_number": n.nhs_number,
        "flag_type": flag_type(n.flag_type),
        "accessed_at": timestamp(n.accessed_at.as_ref()),
        "user_id": n.user_id,
        "role_code": n.role_code,
        "ods_code": n.ods_code,
        "organisation_name": n.organisation_name,
        "setting_type": setting_type(n.setting_type),
        "lookup_id": n.lookup_id,
        "superseded_by": n.superseded_by,
    })
}

pub fn audit_event(e: &pb::AuditEvent) -> Value {
    json!({
        "sequence": e.sequence,
        "recorded_at": timestamp(e.recorded_at.as_ref()),
        "user_id": e.user_id,
        "role_code": e.role_code,
        "ods_code": e.ods_code,
        "site_ods_code": e.site_ods_code,
        "nhs_number": e.nhs_number,
        "action": e.action,
        "access_kind": enum_name(e.access_kind, pb::AccessKind::as_str_name),
        "outcome": enum_name(e.outcome, pb::AuditOutcome::as_str_name),
        "reason": e.reason,
        "request_id": e.request_id,
        "trace_id": e.trace_id,
        "lookup_id": e.lookup_id,
        "hash": bytes(&e.hash),
        "delivery": e.delivery.as_ref().map(|d| json!({
            "first_cursor": d.first_cursor,
            "last_cursor": d.last_cursor,
            "count": d.count,
        })),
    })
}

pub fn organisation(o: &pb::Organisation) -> Value {
    json!({
        "ods_code": o.ods_code,
        "name": o.name,
        "kind": enum_name(o.kind, pb::OrganisationKind::as_str_name),
        "onboarded": o.onboarded,
        "create_time": timestamp(o.create_time.as_ref()),
        "update_time": timestamp(o.update_time.as_ref()),
    })
}

pub fn system(s: &pb::System) -> Value {
    json!({
        "san": s.san,
        "ods_code": s.ods_code,
        "activities": s.activities,
        "create_time": timestamp(s.create_time.as_ref()),
    })
}
