//! What each public RPC may send (`platform::limits` enforces it as the body arrives). The
//! sizes follow from the fields' maxima stated in the proto comments, with room: a lookup is a
//! 10-digit number, a setting and a request id of at most 128 bytes (well under 1 KiB), so
//! 4 KiB; the other unary requests hold a few identifiers, a reason of at most 500
//! characters or a page token of at most 1,024 bytes, so 16 KiB; an upload message holds up
//! to 5,000 records of at most 409 bytes each on the wire (FlagRecord's field maxima: nhs_number
//! 32, three dates of 10, two phones of 32, email 254, and a ten-byte flag type, each with its
//! tag and length) and an upload_id of at most 515: 5,000 x 409 + 515 = 2,045,515 bytes, so
//! 2 MiB (`platform::requests::MAX_UPLOAD_MESSAGE_BYTES`, which checks the arithmetic), a
//! quarter of the server-wide decode limit it used to keep.

use platform::limits::{CallLimits, LimitsFor};
use std::sync::Arc;

pub const LOOKUP_MAX_BYTES: usize = 4 * 1024;
pub const UNARY_MAX_BYTES: usize = 16 * 1024;
pub const UPLOAD_MESSAGE_MAX_BYTES: usize = platform::requests::MAX_UPLOAD_MESSAGE_BYTES;

pub fn for_path(path: &str) -> CallLimits {
    match path {
        "/cpis.gateway.v1.ChildProtection/LookupChild" => CallLimits {
            max_message_bytes: LOOKUP_MAX_BYTES,
            client_streaming: false,
        },
        "/cpis.gateway.v1.LocalAuthority/UploadFlags" => CallLimits {
            max_message_bytes: UPLOAD_MESSAGE_MAX_BYTES,
            client_streaming: true,
        },
        _ => CallLimits {
            max_message_bytes: UNARY_MAX_BYTES,
            client_streaming: false,
        },
    }
}

pub fn public() -> LimitsFor {
    Arc::new(for_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uploads_stream_and_a_lookup_needs_a_few_kilobytes() {
        assert!(for_path("/cpis.gateway.v1.LocalAuthority/UploadFlags").client_streaming);
        let lookup = for_path("/cpis.gateway.v1.ChildProtection/LookupChild");
        assert!(!lookup.client_streaming && lookup.max_message_bytes <= 4096);
        assert!(!for_path("/cpis.gateway.v1.Audit/ListAuditEvents").client_streaming);
    }
}
