//! Validation of the public requests the gateway forwards, before any decision: a bad request
//! is `INVALID_ARGUMENT` with every field violation, is not audited, and reaches no backend.
//! The backends validate again (they trust the gateway's identity, not its input).

use cpis_proto::gateway as pb;
use platform::domain::{Activity, NhsNumber};
use platform::error::{Result, Violations};

fn page_size(v: &mut Violations, size: i32) {
    if size < 0 {
        v.add(
            "page_size",
            "must not be negative (0 means the default, 100)",
        );
    }
}

fn token(v: &mut Violations, token: &str) {
    v.max_len("page_token", token, 1024);
}

fn flag_identity(v: &mut Violations, nhs: &str, flag_type: i32, start: &str) -> Option<NhsNumber> {
    let n = v.nhs_number("nhs_number", nhs);
    v.flag_type("flag_type", flag_type);
    v.date("start_date", start);
    n
}

pub fn end_flag(r: &pb::EndFlagRequest) -> Result<Option<NhsNumber>> {
    let mut v = Violations::new();
    let n = flag_identity(&mut v, &r.nhs_number, r.flag_type, &r.start_date);
    let end = v.date("end_date", &r.end_date);
    let start = platform::domain::parse_date(&r.start_date).ok();
    // An end before the start is bad input, so it must fail here, before the decision, or it
    // would be audited (API.md: validation is neither decided nor audited).
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        v.add("end_date", "must not be before start_date");
    }
    v.finish().map(|_| n)
}

pub fn delete_flag(r: &pb::DeleteFlagRequest) -> Result<Option<NhsNumber>> {
    let mut v = Violations::new();
    let n = flag_identity(&mut v, &r.nhs_number, r.flag_type, &r.start_date);
    v.finish().map(|_| n)
}

pub fn list_flags(r: &pb::ListFlagsRequest) -> Result<()> {
    let mut v = Violations::new();
    page_size(&mut v, r.page_size);
    token(&mut v, &r.page_token);
    v.finish()
}

fn cursor_choice(v: &mut Violations, after_cursor: u64, from_start: bool) {
    if from_start && after_cursor != 0 {
        v.add(
            "from_start",
            "give either after_cursor or from_start, not both",
        );
    }
}

pub fn list_notifications(r: &pb::ListNotificationsRequest) -> Result<()> {
    let mut v = Violations::new();
    cursor_choice(&mut v, r.after_cursor, r.from_start);
    page_size(&mut v, r.page_size);
    token(&mut v, &r.page_token);
    v.finish()
}

pub fn watch_notifications(r: &pb::WatchNotificationsRequest) -> Result<()> {
    let mut v = Violations::new();
    cursor_choice(&mut v, r.after_cursor, r.from_start);
    v.finish()
}

pub fn list_audit_events(r: &pb::ListAuditEventsRequest) -> Result<Option<NhsNumber>> {
    let mut v = Violations::new();
    let n = if r.nhs_number.is_empty() {
        None
    } else {
        v.nhs_number("nhs_number", &r.nhs_number)
    };
    if !r.ods_code.is_empty() {
        v.ods_code("ods_code", &r.ods_code);
    }
    v.max_len("user_id", &r.user_id, 255);
    if let (Some(s), Some(e)) = (&r.start_time, &r.end_time)
        && (s.seconds, s.nanos) > (e.seconds, e.nanos)
    {
        v.add("end_time", "must not be before start_time");
    }
    page_size(&mut v, r.page_size);
    token(&mut v, &r.page_token);
    v.finish().map(|_| n)
}

pub fn verify_audit_log(r: &pb::VerifyAuditLogRequest) -> Result<()> {
    let mut v = Violations::new();
    if let Some(c) = &r.checkpoint
        && c.hash.len() != 32
    {
        v.add(
            "checkpoint.hash",
            "must be the 32-byte SHA-256 hash GetCheckpoint returned",
        );
    }
    v.finish()
}

pub fn upsert_organisation(r: &pb::UpsertOrganisationRequest) -> Result<()> {
    let mut v = Violations::new();
    v.ods_code("ods_code", &r.ods_code);
    let name = r.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        v.add("name", "must be 1 to 200 characters");
    }
    if pb::OrganisationKind::try_from(r.kind)
        .ok()
        .is_none_or(|k| k == pb::OrganisationKind::Unspecified)
    {
        v.add(
            "kind",
            "must be ORGANISATION_KIND_LOCAL_AUTHORITY or ORGANISATION_KIND_HEALTH",
        );
    }
    v.finish()
}

pub fn list_page(page_size_value: i32, page_token: &str) -> Result<()> {
    let mut v = Violations::new();
    page_size(&mut v, page_size_value);
    token(&mut v, page_token);
    v.finish()
}

fn san(v: &mut Violations, san: &str) {
    if san.trim().is_empty() || san.len() > 255 {
        v.add(
            "san",
            "must be the system certificate's SAN (a URI or DNS name), 1 to 255 characters",
        );
    }
}

pub fn register_system(r: &pb::RegisterSystemRequest) -> Result<()> {
    let mut v = Violations::new();
    san(&mut v, &r.san);
    v.ods_code("ods_code", &r.ods_code);
    if r.activities.is_empty() {
        v.add("activities", "must hold CPIS_LA_MANAGE");
    }
    for (i, a) in r.activities.iter().enumerate() {
        if Activity::from_code(a) != Some(Activity::LaManage) {
            v.add(
                format!("activities[{i}]"),
                "a system may hold CPIS_LA_MANAGE only",
            );
        }
    }
    v.finish()
}

pub fn remove_system(r: &pb::RemoveSystemRequest) -> Result<()> {
    let mut v = Violations::new();
    san(&mut v, &r.san);
    v.finish()
}

pub fn set_restriction(r: &pb::SetRestrictionRequest) -> Result<Option<NhsNumber>> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &r.nhs_number);
    let reason = r.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        v.add("reason", "must be 1 to 500 characters");
    }
    v.finish().map(|_| n)
}

pub fn clear_restriction(r: &pb::ClearRestrictionRequest) -> Result<Option<NhsNumber>> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &r.nhs_number);
    v.finish().map(|_| n)
}

pub fn mark_inactive(r: &pb::MarkNhsNumberInactiveRequest) -> Result<Option<NhsNumber>> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &r.nhs_number);
    if !r.superseded_by.is_empty() {
        let s = v.nhs_number("superseded_by", &r.superseded_by);
        if s.is_some() && s == n {
            v.add("superseded_by", "must differ from nhs_number");
        }
    }
    v.finish().map(|_| n)
}

/// The upload id rules that can be checked on the first message.
pub fn upload_id(id: &str) -> Result<()> {
    let mut v = Violations::new();
    if id.trim().is_empty() {
        v.add("upload_id", "must be set in every message of an upload");
    }
    v.max_len("upload_id", id, 128);
    v.finish()
}

/// At most this many records in one message of an upload, and in the whole upload (API.md).
const MAX_RECORDS_PER_MESSAGE: usize = 5_000;
const MAX_RECORDS_PER_UPLOAD: usize = 50_000;

/// Checks one message of an upload stream against the stream's rules, given the first
/// message's `upload_id` and the records received before it; returns the new total. The
/// gateway checks these itself as it relays the stream: the registry checks them too, but its
/// early refusal of a stream the gateway is still sending reaches the gateway as a reset
/// stream, which would turn a client's mistake into `UNAVAILABLE`.
pub fn upload_message(
    first_upload_id: &str,
    message: &pb::UploadFlagsRequest,
    before: usize,
) -> Result<usize> {
    let mut v = Violations::new();
    if message.upload_id != first_upload_id {
        v.add(
            "upload_id",
            "must be the same in every message of an upload",
        );
    }
    let total = before + message.records.len();
    if message.records.len() > MAX_RECORDS_PER_MESSAGE {
        v.add("records", "at most 5,000 records per message");
    } else if total > MAX_RECORDS_PER_UPLOAD {
        v.add("records", "at most 50,000 records per upload");
    }
    v.finish().map(|_| total)
}
