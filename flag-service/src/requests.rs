//! Parsing of requests: every field problem collected into one INVALID_ARGUMENT (nothing is
//! written on bad input), pagination (AIP-158) and the principal's parts the registry uses.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use cpis_proto::access::Principal;
use cpis_proto::flag::GetFlagsRequest;
use platform::domain::{NhsNumber, OdsCode, SettingType, from_timestamp};
use platform::error::{Error, Result, Violations};

use crate::storage::flags::FlagKey;
use crate::storage::restrictions::Administrator;

pub const MAX_NUMBERS_PER_READ: usize = 1000;
pub const MAX_UPLOAD_ID_CHARS: usize = 128;
pub const MAX_RECORDS_PER_MESSAGE: usize = 5_000;
pub const MAX_RECORDS_PER_UPLOAD: u64 = 50_000;
pub const MAX_REASON_CHARS: usize = 500;
const MAX_LOOKUP_ID_CHARS: usize = 128;
const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 1000;

/// The LA a forwarded principal acts for.
pub fn local_authority(principal: &Principal) -> Result<OdsCode> {
    OdsCode::parse(&principal.ods_code).map_err(|_| {
        Error::Unauthenticated("the forwarded principal names no valid organisation".into())
    })
}

/// Who the history names: the user, or the system's certificate SAN.
pub fn actor(principal: &Principal) -> String {
    if principal.user_id.is_empty() {
        principal.system_san.clone()
    } else {
        principal.user_id.clone()
    }
}

pub fn administrator(principal: &Principal) -> Administrator {
    Administrator {
        user_id: actor(principal),
        role_code: principal.role_code.clone(),
        ods_code: principal.ods_code.to_ascii_uppercase(),
        organisation_name: principal.organisation_name.clone(),
    }
}

/// Who looked a child up, for the ACCESS notifications of a notifying read.
#[derive(Clone, Debug)]
pub struct Access {
    pub lookup_id: String,
    pub user_id: String,
    pub role_code: String,
    pub site_ods_code: String,
    pub organisation_name: String,
    pub setting_type: Option<SettingType>,
    pub accessed_at: DateTime<Utc>,
}

/// A valid GetFlags request.
#[derive(Clone, Debug)]
pub struct FlagsRead {
    pub numbers: Vec<NhsNumber>,
    pub as_of: DateTime<Utc>,
    pub notify: Option<Access>,
}

pub fn flags_read(request: &GetFlagsRequest) -> Result<FlagsRead> {
    let mut v = Violations::new();
    if request.nhs_numbers.is_empty() {
        v.add("nhs_numbers", "must hold 1 to 1000 NHS numbers");
    } else if request.nhs_numbers.len() > MAX_NUMBERS_PER_READ {
        v.add("nhs_numbers", "must hold at most 1000 NHS numbers");
    }
    let mut numbers = Vec::with_capacity(request.nhs_numbers.len());
    for (i, raw) in request.nhs_numbers.iter().enumerate() {
        let field = format!("nhs_numbers[{i}]");
        if raw.len() != 10 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            v.add(field, "must be exactly 10 digits, normalised");
        } else if let Some(n) = v.nhs_number(&field, raw) {
            numbers.push(n);
        }
    }
    let as_of = match &request.as_of {
        None => {
            v.add("as_of", "is required");
            None
        }
        Some(ts) => {
            let parsed = from_timestamp(ts);
            if parsed.is_none() {
                v.add("as_of", "is not a valid instant");
            }
            parsed
        }
    };
    let notify = request.notify.as_ref().and_then(|n| {
        if request.nhs_numbers.len() > 1 {
            v.add("notify", "a notifying read is for exactly one NHS number");
        }
        if n.lookup_id.is_empty() {
            v.add("notify.lookup_id", "is required");
        }
        if n.lookup_id.chars().count() > MAX_LOOKUP_ID_CHARS {
            v.add("notify.lookup_id", "must be at most 128 characters");
        }
        let accessed_at = match &n.accessed_at {
            None => as_of,
            Some(ts) => {
                let parsed = from_timestamp(ts);
                if parsed.is_none() {
                    v.add("notify.accessed_at", "is not a valid instant");
                }
                parsed
            }
        };
        Some(Access {
            lookup_id: n.lookup_id.clone(),
            user_id: n.user_id.clone(),
            role_code: n.role_code.clone(),
            site_ods_code: n.site_ods_code.to_ascii_uppercase(),
            organisation_name: n.organisation_name.clone(),
            setting_type: SettingType::from_wire(n.setting_type),
            accessed_at: accessed_at?,
        })
    });
    v.finish()?;
    let as_of = as_of.ok_or_else(|| Error::invalid("as_of", "is required"))?;
    Ok(FlagsRead {
        numbers,
        as_of,
        notify,
    })
}

/// (nhs_number, flag_type, start_date) of EndFlag and DeleteFlag, collecting violations.
pub fn flag_key(
    v: &mut Violations,
    nhs_number: &str,
    flag_type: i32,
    start_date: &str,
) -> Option<FlagKey> {
    let nhs = v.nhs_number("nhs_number", nhs_number);
    let flag_type = v.flag_type("flag_type", flag_type);
    let start = v.date("start_date", start_date);
    Some(FlagKey {
        nhs_number: nhs?.as_str().to_owned(),
        flag_type: flag_type?,
        start: start?,
    })
}

pub fn end_flag(request: &cpis_proto::gateway::EndFlagRequest) -> Result<(FlagKey, NaiveDate)> {
    let mut v = Violations::new();
    let key = flag_key(
        &mut v,
        &request.nhs_number,
        request.flag_type,
        &request.start_date,
    );
    let end = v.date("end_date", &request.end_date);
    if let (Some(key), Some(end)) = (&key, end)
        && end < key.start
    {
        v.add("end_date", "is before start_date");
    }
    v.finish()?;
    match (key, end) {
        (Some(key), Some(end)) => Ok((key, end)),
        _ => Err(Error::invalid("end_date", "is required")),
    }
}

pub fn delete_flag(request: &cpis_proto::gateway::DeleteFlagRequest) -> Result<FlagKey> {
    let mut v = Violations::new();
    let key = flag_key(
        &mut v,
        &request.nhs_number,
        request.flag_type,
        &request.start_date,
    );
    v.finish()?;
    key.ok_or_else(|| Error::invalid("nhs_number", "is required"))
}

pub fn restriction(
    request: &cpis_proto::gateway::SetRestrictionRequest,
) -> Result<(NhsNumber, String)> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &request.nhs_number);
    let chars = request.reason.trim().chars().count();
    if chars == 0 {
        v.add("reason", "is required");
    } else if request.reason.chars().count() > MAX_REASON_CHARS {
        v.add("reason", "must be at most 500 characters");
    }
    v.finish()?;
    let n = n.ok_or_else(|| Error::invalid("nhs_number", "is required"))?;
    Ok((n, request.reason.clone()))
}

pub fn nhs_number_only(value: &str) -> Result<NhsNumber> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", value);
    v.finish()?;
    n.ok_or_else(|| Error::invalid("nhs_number", "is required"))
}

pub fn inactive(
    request: &cpis_proto::gateway::MarkNhsNumberInactiveRequest,
) -> Result<(NhsNumber, Option<NhsNumber>)> {
    let mut v = Violations::new();
    let n = v.nhs_number("nhs_number", &request.nhs_number);
    let by = if request.superseded_by.trim().is_empty() {
        None
    } else {
        v.nhs_number("superseded_by", &request.superseded_by)
    };
    if let (Some(n), Some(by)) = (n, by)
        && n == by
    {
        v.add("superseded_by", "must differ from nhs_number");
    }
    v.finish()?;
    let n = n.ok_or_else(|| Error::invalid("nhs_number", "is required"))?;
    Ok((n, by))
}

/// AIP-158: 0 means 100, above 1000 is 1000, negative is invalid.
pub fn page_size(v: &mut Violations, page_size: i32) -> u64 {
    match page_size {
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        0 => DEFAULT_PAGE_SIZE,
        n => (n as u64).min(MAX_PAGE_SIZE),
    }
}

/// Page tokens are opaque to callers; inside they name what the page followed and the request
/// they belong to, so a token replayed with other parameters is refused.
pub fn page_token(kind: &str, parts: &[u64]) -> String {
    let text = std::iter::once(kind.to_owned())
        .chain(parts.iter().map(u64::to_string))
        .collect::<Vec<_>>()
        .join(":");
    URL_SAFE_NO_PAD.encode(text)
}

/// The numbers inside a token of `kind` carrying `count` of them; `None` when malformed.
pub fn read_page_token(token: &str, kind: &str, count: usize) -> Option<Vec<u64>> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != kind {
        return None;
    }
    let numbers: Option<Vec<u64>> = parts.map(|p| p.parse().ok()).collect();
    numbers.filter(|n| n.len() == count)
}

/// Where a notification listing or watch starts, before the acknowledged cursor is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    After(u64),
    Acknowledged,
    Oldest,
}

pub fn start(v: &mut Violations, after_cursor: u64, from_start: bool) -> Start {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn page_sizes_follow_aip_158() {
        let mut v = Violations::new();
        assert_eq!(page_size(&mut v, 0), 100);
        assert_eq!(page_size(&mut v, 5), 5);
        assert_eq!(page_size(&mut v, 5000), 1000);
        assert!(v.is_empty());
        page_size(&mut v, -1);
        assert!(!v.is_empty());
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_other_kinds() {
        let token = page_token("flags", &[42]);
        assert_eq!(read_page_token(&token, "flags", 1), Some(vec![42]));
        assert_eq!(read_page_token(&token, "notifications", 1), None);
        assert_eq!(read_page_token(&token, "flags", 2), None);
        assert_eq!(read_page_token("not a token!", "flags", 1), None);
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(s in ".{0,40}") {
            let _ = read_page_token(&s, "flags", 1);
        }
    }
}
