//! One validator per public request message (`cpis.gateway.v1`), shared by the gateway and by
//! the backend that owns the rule, so the two can never disagree. The gateway calls each before
//! any decision (bad input is `INVALID_ARGUMENT`, neither decided nor audited); the owning
//! backend calls the same function again (it trusts the gateway's identity, not its input) and
//! keeps the typed values it returns. Every problem is reported at once, with the owning
//! backend's wording.

use crate::domain::{
    AccessKind, Activity, FlagType, NhsNumber, OdsCode, OrganisationKind, SettingType,
    from_timestamp,
};
use crate::error::{Error, Result, Violations};
use crate::pagination::Page;
use chrono::NaiveDate;
use cpis_proto::gateway as pb;
use std::collections::BTreeSet;

pub const MAX_REQUEST_ID_BYTES: usize = 128;
pub const MAX_UPLOAD_ID_CHARS: usize = 128;
pub const MAX_RECORDS_PER_MESSAGE: usize = 5_000;
pub const MAX_RECORDS_PER_UPLOAD: u64 = 50_000;

// The longest each `FlagRecord` string may be, in bytes (types.proto states them). A longer
// value refuses its record (a record code, judged by flag-service), not the stream; what the
// maxima are for is sizing the upload message and everything derived from it. Every valid value
// is ASCII, so bytes and characters agree for them.
/// 10 digits with spaces between them, and room for padding a fixed-width export adds.
pub const MAX_RECORD_NHS_NUMBER_BYTES: usize = 32;
/// Exactly `YYYY-MM-DD`.
pub const MAX_RECORD_DATE_BYTES: usize = 10;
/// At most 15 digits, one `+`, and spaces: room for one between every two digits.
pub const MAX_RECORD_PHONE_BYTES: usize = 32;
/// RFC 5321's longest forward path less its angle brackets.
pub const MAX_RECORD_EMAIL_BYTES: usize = 254;

/// Bytes a length-delimited field takes on the wire: a one-byte tag, the length, the value.
const fn delimited(len: usize) -> usize {
    let mut varint = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        varint += 1;
        rest >>= 7;
    }
    1 + varint + len
}

/// The largest `FlagRecord` whose every field is within its maximum, encoded:
/// nhs_number 1+1+32 = 34, flag_type 1+10 = 11 (a negative int32 takes ten bytes), three dates
/// 3 x (1+1+10) = 36, two phones 2 x (1+1+32) = 68, email 1+2+254 = 257: 406 bytes.
pub const MAX_FLAG_RECORD_BYTES: usize = delimited(MAX_RECORD_NHS_NUMBER_BYTES)
    + (1 + 10)
    + 3 * delimited(MAX_RECORD_DATE_BYTES)
    + 2 * delimited(MAX_RECORD_PHONE_BYTES)
    + delimited(MAX_RECORD_EMAIL_BYTES);

/// The largest `UploadFlagsRequest` of records within their maxima: 5,000 records of
/// 1+2+406 = 409 bytes each (tag, length, record) and an upload_id of 128 four-byte characters
/// (1+2+512 = 515): 2,045,515 bytes, under 2 MiB.
pub const MAX_UPLOAD_MESSAGE_ENCODED_BYTES: usize =
    MAX_RECORDS_PER_MESSAGE * delimited(MAX_FLAG_RECORD_BYTES) + delimited(MAX_UPLOAD_ID_CHARS * 4);

/// What the gateway accepts as one upload message: the largest legitimate one, rounded up to
/// 2 MiB. A message of 5,000 records over their maxima may be refused whole
/// (`MESSAGE_TOO_LARGE`); sent in smaller messages, each such record gets its record code.
pub const MAX_UPLOAD_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
const _: () = assert!(MAX_UPLOAD_MESSAGE_ENCODED_BYTES <= MAX_UPLOAD_MESSAGE_BYTES);

/// What one record weighs in an `UploadFlagsRequest`: its tag, its length and itself (for
/// bounding relayed messages in bytes).
pub fn encoded_record_bytes(record: &pb::FlagRecord) -> usize {
    prost::encoding::message::encoded_len(2, record)
}

/// An upload's report fits the 4 MiB that stock gRPC clients receive by default, for the
/// largest upload, so its answer always reaches the caller (and a resend always gets it back).
pub const MAX_UPLOAD_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// A `RecordResult` echoes at most this much of the record's NHS number (a valid one is 10
/// digits; a refused one is cut, on a character boundary).
pub const MAX_RESULT_NHS_NUMBER_BYTES: usize = 16;
/// A `RecordResult`'s message is a short fixed text naming the field; never longer than this.
pub const MAX_RESULT_MESSAGE_BYTES: usize = 48;
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_ORGANISATION_NAME_CHARS: usize = 200;
pub const MAX_SAN_BYTES: usize = 255;
pub const MAX_USER_ID_BYTES: usize = 255;
/// Lookup ids are UUIDs (36 bytes); the limit leaves room without letting a request carry a
/// page of text.
pub const MAX_LOOKUP_ID_BYTES: usize = 128;

impl Violations {
    /// The value parsed from a request once every field was checked: `INVALID_ARGUMENT` with
    /// all the violations, else the value. Each parser records a violation whenever it returns
    /// `None`, so a missing value without one is a bug, answered as `INTERNAL`.
    pub fn check<T>(self, value: Option<T>) -> Result<T> {
        self.finish()?;
        value.ok_or_else(|| Error::internal("a validated request lost a field"))
    }
}

/// Where a lookup is made from, as access-service decides it: the kind of access and a setting
/// whose type makes that kind of access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupSetting {
    pub access_kind: AccessKind,
    pub site: OdsCode,
    pub setting_type: SettingType,
}

/// The access kind and setting of a lookup, each checked, and checked against each other.
pub fn lookup_setting(
    v: &mut Violations,
    access_kind: i32,
    setting: &pb::Setting,
) -> Option<LookupSetting> {
    let access_kind = v.access_kind("access_kind", access_kind);
    let site = v.ods_code("setting.ods_code", &setting.ods_code);
    let setting_type = v.setting_type("setting.setting_type", setting.setting_type);
    if let (Some(kind), Some(st)) = (access_kind, setting_type)
        && st.access_kind() != kind
    {
        v.add(
            "setting.setting_type",
            format!("is not a setting type for ACCESS_KIND_{kind}"),
        );
        return None;
    }
    Some(LookupSetting {
        access_kind: access_kind?,
        site: site?,
        setting_type: setting_type?,
    })
}

/// A valid `LookupChildRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub nhs_number: NhsNumber,
    pub setting: LookupSetting,
    pub request_id: String,
}

pub fn lookup_child(r: &pb::LookupChildRequest) -> Result<Lookup> {
    let mut v = Violations::new();
    let nhs_number = v.nhs_number("nhs_number", &r.nhs_number);
    let setting = lookup_setting(
        &mut v,
        r.access_kind,
        r.setting.as_ref().unwrap_or(&pb::Setting::default()),
    );
    v.text("request_id", &r.request_id, MAX_REQUEST_ID_BYTES);
    let lookup = (|| {
        Some(Lookup {
            nhs_number: nhs_number?,
            setting: setting?,
            request_id: r.request_id.clone(),
        })
    })();
    v.check(lookup)
}

/// A flag as EndFlag and DeleteFlag name it: the child, the type and the start date. Ordered
/// by those, in that order (the order an upload locks rows in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlagKey {
    pub nhs_number: NhsNumber,
    pub flag_type: FlagType,
    pub start: NaiveDate,
}

fn flag_key(v: &mut Violations, nhs_number: &str, flag_type: i32, start: &str) -> Option<FlagKey> {
    let nhs_number = v.nhs_number("nhs_number", nhs_number);
    let flag_type = v.flag_type("flag_type", flag_type);
    let start = v.date("start_date", start);
    Some(FlagKey {
        nhs_number: nhs_number?,
        flag_type: flag_type?,
        start: start?,
    })
}

/// A valid `EndFlagRequest`: the flag, and an end date not before its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndFlag {
    pub key: FlagKey,
    pub end: NaiveDate,
}

pub fn end_flag(r: &pb::EndFlagRequest) -> Result<EndFlag> {
    let mut v = Violations::new();
    let key = flag_key(&mut v, &r.nhs_number, r.flag_type, &r.start_date);
    let end = v.date("end_date", &r.end_date);
    if let (Some(key), Some(end)) = (&key, end)
        && end < key.start
    {
        v.add("end_date", "is before start_date");
    }
    let end_flag = (|| {
        Some(EndFlag {
            key: key?,
            end: end?,
        })
    })();
    v.check(end_flag)
}

pub fn delete_flag(r: &pb::DeleteFlagRequest) -> Result<FlagKey> {
    let mut v = Violations::new();
    let key = flag_key(&mut v, &r.nhs_number, r.flag_type, &r.start_date);
    v.check(key)
}

/// A page of the caller's LA's flags, after the flag row id the last page ended on.
pub fn list_flags(r: &pb::ListFlagsRequest) -> Result<Page<u64>> {
    let mut v = Violations::new();
    let page = Page::parse(&mut v, r.page_size, &r.page_token, "flags");
    v.check(Some(page))
}

/// Where a notification listing or watch starts, before the acknowledged cursor is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    After(u64),
    Acknowledged,
    Oldest,
}

fn start(v: &mut Violations, after_cursor: u64, from_start: bool) -> Start {
    match (after_cursor, from_start) {
        (0, true) => Start::Oldest,
        (_, true) => {
            v.add(
                "from_start",
                "must not be combined with a non-zero after_cursor",
            );
            Start::Oldest
        }
        (0, false) => Start::Acknowledged,
        (after, false) => Start::After(after),
    }
}

/// A valid `ListNotificationsRequest`: where the listing starts, and the page (its tokens
/// bound to that start, resuming after a cursor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationsPage {
    pub start: Start,
    pub page: Page<u64>,
}

pub fn list_notifications(r: &pb::ListNotificationsRequest) -> Result<NotificationsPage> {
    let mut v = Violations::new();
    let start = start(&mut v, r.after_cursor, r.from_start);
    let filters = format!("notifications:{}:{}", r.after_cursor, r.from_start);
    let page = Page::parse(&mut v, r.page_size, &r.page_token, filters);
    v.check(Some(NotificationsPage { start, page }))
}

pub fn watch_notifications(r: &pb::WatchNotificationsRequest) -> Result<Start> {
    let mut v = Violations::new();
    let start = start(&mut v, r.after_cursor, r.from_start);
    v.check(Some(start))
}

/// The filters of an audit listing; instants in microseconds since the epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilters {
    pub nhs_number: Option<NhsNumber>,
    pub user_id: Option<String>,
    pub ods_code: Option<OdsCode>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// A valid `ListAuditEventsRequest`: its filters and a page after an audit sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    pub filters: AuditFilters,
    pub page: Page<i64>,
}

fn micros(v: &mut Violations, field: &str, ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    let ts = ts?;
    let parsed = from_timestamp(ts).map(|t| t.timestamp_micros());
    if parsed.is_none() {
        v.add(field, "is not a valid instant");
    }
    parsed
}

pub fn list_audit_events(r: &pb::ListAuditEventsRequest) -> Result<AuditPage> {
    let mut v = Violations::new();
    let nhs_number = (!r.nhs_number.is_empty())
        .then(|| v.nhs_number("nhs_number", &r.nhs_number))
        .flatten();
    let ods_code = (!r.ods_code.is_empty())
        .then(|| v.ods_code("ods_code", &r.ods_code))
        .flatten();
    v.text("user_id", &r.user_id, MAX_USER_ID_BYTES);
    let start = micros(&mut v, "start_time", r.start_time.as_ref());
    let end = micros(&mut v, "end_time", r.end_time.as_ref());
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        v.add("end_time", "must not be before start_time");
    }
    let filters = AuditFilters {
        nhs_number,
        user_id: (!r.user_id.is_empty()).then(|| r.user_id.clone()),
        ods_code,
        start,
        end,
    };
    let bound_to = format!(
        "audit{:?}",
        (
            filters.nhs_number.as_ref().map(NhsNumber::as_str),
            &filters.user_id,
            filters.ods_code.as_ref().map(OdsCode::as_str),
            filters.start,
            filters.end
        )
    );
    let page = Page::parse(&mut v, r.page_size, &r.page_token, bound_to);
    v.check(Some(AuditPage { filters, page }))
}

/// The shape of a `VerifyAuditLogRequest`'s checkpoint; its signature is access-service's to
/// verify.
pub fn verify_audit_log(r: &pb::VerifyAuditLogRequest) -> Result<()> {
    let mut v = Violations::new();
    if let Some(c) = &r.checkpoint
        && c.hash.len() != 32
    {
        v.add("checkpoint.hash", "must be 32 bytes");
    }
    v.finish()
}

/// A valid `UpsertOrganisationRequest`, its name trimmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrganisationUpsert {
    pub ods_code: OdsCode,
    pub name: String,
    pub kind: OrganisationKind,
}

pub fn upsert_organisation(r: &pb::UpsertOrganisationRequest) -> Result<OrganisationUpsert> {
    let mut v = Violations::new();
    let ods_code = v.ods_code("ods_code", &r.ods_code);
    let name = r.name.trim();
    if name.is_empty() || name.chars().count() > MAX_ORGANISATION_NAME_CHARS {
        v.add("name", "must be 1 to 200 characters");
    }
    v.name("name", name);
    let kind = OrganisationKind::from_wire(r.kind);
    if kind.is_none() {
        v.add(
            "kind",
            "must be ORGANISATION_KIND_LOCAL_AUTHORITY or ORGANISATION_KIND_HEALTH",
        );
    }
    let upsert = (|| {
        Some(OrganisationUpsert {
            ods_code: ods_code?,
            name: name.to_owned(),
            kind: kind?,
        })
    })();
    v.check(upsert)
}

/// A page of organisations, after an ODS code.
pub fn list_organisations(r: &pb::ListOrganisationsRequest) -> Result<Page<String>> {
    let mut v = Violations::new();
    let page = Page::parse(&mut v, r.page_size, &r.page_token, "organisations");
    v.check(Some(page))
}

/// A page of systems, after a SAN.
pub fn list_systems(r: &pb::ListSystemsRequest) -> Result<Page<String>> {
    let mut v = Violations::new();
    let page = Page::parse(&mut v, r.page_size, &r.page_token, "systems");
    v.check(Some(page))
}

/// A page of failed obligations, after a lookup id.
pub fn list_failed_obligations(r: &pb::ListFailedObligationsRequest) -> Result<Page<String>> {
    let mut v = Violations::new();
    let page = Page::parse(&mut v, r.page_size, &r.page_token, "failed-obligations");
    v.check(Some(page))
}

/// The lookup id of a valid `RetryObligationRequest`.
pub fn retry_obligation(r: &pb::RetryObligationRequest) -> Result<String> {
    let mut v = Violations::new();
    if r.lookup_id.is_empty() {
        v.add("lookup_id", "is required");
    }
    v.text("lookup_id", &r.lookup_id, MAX_LOOKUP_ID_BYTES);
    v.finish()?;
    Ok(r.lookup_id.clone())
}

fn san(v: &mut Violations, san: &str) {
    if san.trim().is_empty() || san.len() > MAX_SAN_BYTES {
        v.add("san", "must be 1 to 255 characters");
    }
    v.text("san", san, MAX_SAN_BYTES);
}

/// A valid `RegisterSystemRequest`: a system may hold `CPIS_LA_MANAGE` only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemRegistration {
    pub san: String,
    pub ods_code: OdsCode,
    pub activities: BTreeSet<Activity>,
}

pub fn register_system(r: &pb::RegisterSystemRequest) -> Result<SystemRegistration> {
    let mut v = Violations::new();
    san(&mut v, &r.san);
    let ods_code = v.ods_code("ods_code", &r.ods_code);
    if r.activities.is_empty() {
        v.add("activities", "must hold CPIS_LA_MANAGE");
    }
    let mut activities = BTreeSet::new();
    for (i, code) in r.activities.iter().enumerate() {
        match Activity::from_code(code) {
            Some(Activity::LaManage) => {
                activities.insert(Activity::LaManage);
            }
            _ => v.add(
                format!("activities[{i}]"),
                "only CPIS_LA_MANAGE may be granted to a system",
            ),
        }
    }
    let registration = ods_code.map(|ods_code| SystemRegistration {
        san: r.san.clone(),
        ods_code,
        activities,
    });
    v.check(registration)
}

pub fn remove_system(r: &pb::RemoveSystemRequest) -> Result<String> {
    let mut v = Violations::new();
    san(&mut v, &r.san);
    v.check(Some(r.san.clone()))
}

/// A valid `SetRestrictionRequest`: the number and why it is restricted.
pub fn set_restriction(r: &pb::SetRestrictionRequest) -> Result<(NhsNumber, String)> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &r.nhs_number);
    if r.reason.trim().is_empty() {
        v.add("reason", "is required");
    } else if r.reason.chars().count() > MAX_REASON_CHARS {
        v.add("reason", "must be at most 500 characters");
    }
    v.text("reason", &r.reason, MAX_REASON_CHARS * 4);
    v.check(n.map(|n| (n, r.reason.clone())))
}

pub fn clear_restriction(r: &pb::ClearRestrictionRequest) -> Result<NhsNumber> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &r.nhs_number);
    v.check(n)
}

/// A valid `MarkNhsNumberInactiveRequest`: the number, and the one superseding it if any.
pub fn mark_nhs_number_inactive(
    r: &pb::MarkNhsNumberInactiveRequest,
) -> Result<(NhsNumber, Option<NhsNumber>)> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &r.nhs_number);
    let by = if r.superseded_by.trim().is_empty() {
        Some(None)
    } else {
        v.nhs_number("superseded_by", &r.superseded_by).map(Some)
    };
    if let (Some(n), Some(Some(by))) = (n, by)
        && n == by
    {
        v.add("superseded_by", "must differ from nhs_number");
    }
    v.check(n.zip(by))
}

/// The rules of an `UploadFlags` stream that hold message by message: one `upload_id` of 1 to
/// 128 characters in every message, at most 5,000 records per message and 50,000 in all. The
/// gateway applies them as it relays (an early refusal by the registry would reach it as a
/// reset stream), the registry as it stages.
#[derive(Debug, Default)]
pub struct UploadStream {
    upload_id: Option<String>,
    records: u64,
}

impl UploadStream {
    /// Checks the next message; returns the position of its first record in the upload.
    pub fn message(&mut self, message: &pb::UploadFlagsRequest) -> Result<u64> {
        match &self.upload_id {
            None => {
                let chars = message.upload_id.chars().count();
                if chars == 0 || chars > MAX_UPLOAD_ID_CHARS {
                    return Err(Error::invalid("upload_id", "must be 1 to 128 characters"));
                }
                let mut v = Violations::new();
                v.text("upload_id", &message.upload_id, MAX_UPLOAD_ID_CHARS * 4);
                v.finish()?;
                self.upload_id = Some(message.upload_id.clone());
            }
            Some(first) if *first != message.upload_id => {
                return Err(Error::invalid(
                    "upload_id",
                    "must be the same in every message of an upload",
                ));
            }
            Some(_) => {}
        }
        if message.records.len() > MAX_RECORDS_PER_MESSAGE {
            return Err(Error::invalid(
                "records",
                "at most 5,000 records per message",
            ));
        }
        let first = self.records;
        self.records += message.records.len() as u64;
        if self.records > MAX_RECORDS_PER_UPLOAD {
            return Err(Error::invalid(
                "records",
                "at most 50,000 records per upload",
            ));
        }
        Ok(first)
    }

    /// The stream ended cleanly: its `upload_id`, provided it carried a record.
    pub fn finish(self) -> Result<String> {
        let Some(upload_id) = self.upload_id else {
            return Err(Error::invalid("records", "the upload sent no message"));
        };
        if self.records == 0 {
            return Err(Error::invalid("records", "the upload carries no record"));
        }
        Ok(upload_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cpis_proto::gateway::{AccessKind as PbKind, SettingType as PbSetting};
    use proptest::prelude::*;

    fn fields(e: Error) -> Vec<String> {
        match e {
            Error::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("not INVALID_ARGUMENT: {other}"),
        }
    }

    fn lookup(kind: PbKind, st: PbSetting) -> pb::LookupChildRequest {
        pb::LookupChildRequest {
            nhs_number: "943 476 5919".into(),
            access_kind: kind.into(),
            setting: Some(pb::Setting {
                ods_code: "rqx01".into(),
                setting_type: st.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_lookup_is_normalised() {
        let l = lookup_child(&lookup(PbKind::Unscheduled, PbSetting::EmergencyDepartment)).unwrap();
        assert_eq!(l.nhs_number.as_str(), "9434765919");
        assert_eq!(l.setting.site.as_str(), "RQX01");
    }

    #[test]
    fn an_access_kind_inconsistent_with_the_setting_is_invalid() {
        for (kind, st) in [
            (PbKind::Unscheduled, PbSetting::GpPractice),
            (PbKind::Scheduled, PbSetting::EmergencyDepartment),
        ] {
            let e = lookup_child(&lookup(kind, st)).unwrap_err();
            assert_eq!(fields(e), ["setting.setting_type"], "{kind:?} from {st:?}");
        }
    }

    #[test]
    fn every_bad_field_of_a_lookup_is_reported() {
        let bad = pb::LookupChildRequest {
            nhs_number: "123".into(),
            access_kind: 0,
            setting: None,
            request_id: "x".repeat(200),
        };
        assert_eq!(
            fields(lookup_child(&bad).unwrap_err()),
            [
                "nhs_number",
                "access_kind",
                "setting.ods_code",
                "setting.setting_type",
                "request_id"
            ]
        );
    }

    #[test]
    fn an_end_before_the_start_is_invalid() {
        let r = pb::EndFlagRequest {
            nhs_number: "9434765919".into(),
            flag_type: 1,
            start_date: "2025-05-01".into(),
            end_date: "2025-04-30".into(),
        };
        assert_eq!(fields(end_flag(&r).unwrap_err()), ["end_date"]);
        let ok = pb::EndFlagRequest {
            end_date: "2025-05-01".into(),
            ..r
        };
        assert_eq!(end_flag(&ok).unwrap().end, ok.start_date.parse().unwrap());
    }

    #[test]
    fn after_cursor_and_from_start_exclude_each_other() {
        let r = pb::WatchNotificationsRequest {
            after_cursor: 3,
            from_start: true,
        };
        assert_eq!(fields(watch_notifications(&r).unwrap_err()), ["from_start"]);
        let r = pb::WatchNotificationsRequest {
            after_cursor: 0,
            from_start: false,
        };
        assert_eq!(watch_notifications(&r).unwrap(), Start::Acknowledged);
    }

    #[test]
    fn a_notifications_token_is_bound_to_its_start() {
        let first = list_notifications(&pb::ListNotificationsRequest {
            after_cursor: 0,
            from_start: true,
            page_size: 2,
            page_token: String::new(),
        })
        .unwrap();
        let token = first.page.token_after(&7);
        let other = pb::ListNotificationsRequest {
            after_cursor: 1,
            from_start: false,
            page_size: 2,
            page_token: token.clone(),
        };
        assert_eq!(
            fields(list_notifications(&other).unwrap_err()),
            ["page_token"]
        );
        let same = pb::ListNotificationsRequest {
            after_cursor: 0,
            from_start: true,
            page_size: 2,
            page_token: token,
        };
        assert_eq!(list_notifications(&same).unwrap().page.after, Some(7));
    }

    #[test]
    fn a_system_may_hold_la_manage_only() {
        let r = pb::RegisterSystemRequest {
            san: "spiffe://council/x".into(),
            ods_code: "706".into(),
            activities: vec!["CPIS_LA_MANAGE".into(), "B0107".into()],
        };
        assert_eq!(fields(register_system(&r).unwrap_err()), ["activities[1]"]);
        let none = pb::RegisterSystemRequest {
            activities: vec![],
            ..r
        };
        assert_eq!(fields(register_system(&none).unwrap_err()), ["activities"]);
    }

    #[test]
    fn a_number_cannot_supersede_itself() {
        let r = pb::MarkNhsNumberInactiveRequest {
            nhs_number: "9434765919".into(),
            superseded_by: "943 476 5919".into(),
        };
        assert_eq!(
            fields(mark_nhs_number_inactive(&r).unwrap_err()),
            ["superseded_by"]
        );
    }

    #[test]
    fn an_upload_keeps_one_id_and_its_limits() {
        let message = |id: &str, n: usize| pb::UploadFlagsRequest {
            upload_id: id.into(),
            records: vec![pb::FlagRecord::default(); n],
        };
        let mut stream = UploadStream::default();
        assert_eq!(stream.message(&message("u1", 3)).unwrap(), 0);
        assert_eq!(stream.message(&message("u1", 2)).unwrap(), 3);
        assert!(stream.message(&message("u2", 1)).is_err());
        assert!(UploadStream::default().message(&message("", 1)).is_err());
        assert!(
            UploadStream::default()
                .message(&message("u", MAX_RECORDS_PER_MESSAGE + 1))
                .is_err()
        );
        assert!(UploadStream::default().finish().is_err());
        let mut empty = UploadStream::default();
        empty.message(&message("u", 0)).unwrap();
        assert!(empty.finish().is_err());
    }

    #[test]
    fn control_characters_stop_at_the_edge() {
        let mut r = lookup(PbKind::Unscheduled, PbSetting::EmergencyDepartment);
        r.request_id = "id\0".into();
        assert_eq!(fields(lookup_child(&r).unwrap_err()), ["request_id"]);
        let org = pb::UpsertOrganisationRequest {
            ods_code: "706".into(),
            name: "Council\u{202E}".into(),
            kind: 1,
            onboarded: true,
        };
        assert_eq!(fields(upsert_organisation(&org).unwrap_err()), ["name"]);
        let mut stream = UploadStream::default();
        let poisoned = pb::UploadFlagsRequest {
            upload_id: "u\0".into(),
            records: vec![],
        };
        assert!(stream.message(&poisoned).is_err());
    }

    /// Every field of a `FlagRecord` at its maximum (all named: a field added to the proto must
    /// be given a maximum here before this compiles).
    fn maximal_record() -> pb::FlagRecord {
        pb::FlagRecord {
            nhs_number: "9".repeat(MAX_RECORD_NHS_NUMBER_BYTES),
            flag_type: i32::MIN,
            start_date: "2025-01-01".into(),
            end_date: "2025-01-01".into(),
            due_date: "2025-01-01".into(),
            emergency_phone: "1".repeat(MAX_RECORD_PHONE_BYTES),
            office_hours_phone: "1".repeat(MAX_RECORD_PHONE_BYTES),
            email: "e".repeat(MAX_RECORD_EMAIL_BYTES),
        }
    }

    #[test]
    fn the_upload_message_bound_is_the_largest_message_of_records_within_their_maxima() {
        use prost::Message;
        let record = maximal_record();
        assert_eq!(record.start_date.len(), MAX_RECORD_DATE_BYTES);
        assert_eq!(record.encoded_len(), MAX_FLAG_RECORD_BYTES);
        let message = pb::UploadFlagsRequest {
            upload_id: "\u{10FFFF}".repeat(MAX_UPLOAD_ID_CHARS),
            records: vec![record; MAX_RECORDS_PER_MESSAGE],
        };
        assert_eq!(message.encoded_len(), MAX_UPLOAD_MESSAGE_ENCODED_BYTES);
        assert_eq!(encoded_record_bytes(&message.records[0]), 409);
        assert_eq!(MAX_UPLOAD_MESSAGE_ENCODED_BYTES, 2_045_515);
        assert!(message.encoded_len() <= MAX_UPLOAD_MESSAGE_BYTES);
        // And it is a message the stream rules accept.
        assert_eq!(UploadStream::default().message(&message).unwrap(), 0);
    }

    proptest! {
        /// Whatever arrives, a validator answers; it never panics and never loses a field.
        #[test]
        fn validators_never_panic(nhs in ".{0,20}", ods in ".{0,12}", kind in -2i32..20, st in -2i32..25) {
            let r = pb::LookupChildRequest {
                nhs_number: nhs.clone(),
                access_kind: kind,
                setting: Some(pb::Setting { ods_code: ods.clone(), setting_type: st }),
                ..Default::default()
            };
            if let Err(e) = lookup_child(&r) {
                prop_assert!(matches!(e, Error::InvalidArgument(_)));
            }
            let r = pb::MarkNhsNumberInactiveRequest { nhs_number: nhs.clone(), superseded_by: ods };
            if let Err(e) = mark_nhs_number_inactive(&r) {
                prop_assert!(matches!(e, Error::InvalidArgument(_)));
            }
        }
    }
}
