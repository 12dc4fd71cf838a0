//! What flag-service parses itself: the internal `GetFlagsRequest` (every field problem
//! collected into one INVALID_ARGUMENT) and the parts of the forwarded principal the registry
//! uses. The public request messages are parsed by `platform::requests`, the validators the
//! gateway calls too, so the two never disagree.

use crate::flag::{Access, Administrator};
use chrono::{DateTime, Utc};
use cpis_proto::access::Principal;
use cpis_proto::flag::GetFlagsRequest;
use platform::domain::{NhsNumber, OdsCode, SettingType, from_timestamp};
use platform::error::{Error, Result, Violations};

pub const MAX_NUMBERS_PER_READ: usize = 1000;
const MAX_LOOKUP_ID_CHARS: usize = 128;

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
    let read = as_of.map(|as_of| FlagsRead {
        numbers,
        as_of,
        notify,
    });
    v.check(read)
}
