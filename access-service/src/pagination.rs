//! AIP-158 pagination: page sizes and opaque page tokens. A token carries where the last page
//! ended and a digest of the filters it was issued for, so a token reused with other filters
//! (or on another list) is refused rather than silently skipping records.

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::error::Violations;

pub const DEFAULT_PAGE_SIZE: u64 = 100;
pub const MAX_PAGE_SIZE: u64 = 1000;

/// 0 means 100, above 1000 is 1000, negative is a violation of `field`.
pub fn page_size(violations: &mut Violations, field: &str, value: i32) -> u64 {
    match value {
        v if v < 0 => {
            violations.add(field, "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        0 => DEFAULT_PAGE_SIZE,
        v => (v as u64).min(MAX_PAGE_SIZE),
    }
}

fn filters_digest(filters: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest(&SHA256, filters.as_bytes()).as_ref()[..8]);
    out
}

/// A token resuming after `position` (a sequence, an ODS code, a SAN) for these filters.
pub fn encode(filters: &str, position: &[u8]) -> String {
    let mut raw = filters_digest(filters).to_vec();
    raw.extend_from_slice(position);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position in `token`; `None` (after recording a violation of `field`) when malformed or
/// issued for other filters. An empty token is the first page: `Some(empty)`.
pub fn decode(
    violations: &mut Violations,
    field: &str,
    token: &str,
    filters: &str,
) -> Option<Vec<u8>> {
    if token.is_empty() {
        return Some(Vec::new());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok();
    match raw {
        Some(raw) if raw.len() > 8 && raw[..8] == filters_digest(filters) => {
            Some(raw[8..].to_vec())
        }
        _ => {
            violations.add(
                field,
                "must be a next_page_token from a previous call with the same filters",
            );
            None
        }
    }
}

/// Keyset paging over a text key (an ODS code, a SAN) for the lists of one `kind`: the page
/// size and where the previous page ended, read from the request.
pub struct KeyPage {
    pub size: u64,
    pub after: String,
    kind: &'static str,
}

impl KeyPage {
    pub fn parse(kind: &'static str, page_size: i32, page_token: &str) -> platform::Result<Self> {
        let mut v = Violations::new();
        let size = self::page_size(&mut v, "page_size", page_size);
        let after = decode(&mut v, "page_token", page_token, kind);
        v.finish()?;
        let after = String::from_utf8(after.unwrap_or_default())
            .map_err(|_| platform::Error::invalid("page_token", "is malformed"))?;
        Ok(KeyPage { size, after, kind })
    }

    /// Rows are fetched `size + 1` at a time: the extra row says whether a next page exists.
    pub fn limit(&self) -> u64 {
        self.size + 1
    }

    /// The page, and the token resuming after its last row (empty at the end).
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> &str) -> (Vec<T>, String) {
        let more = rows.len() as u64 > self.size;
        rows.truncate(self.size as usize);
        let next = match (more, rows.last()) {
            (true, Some(last)) => encode(self.kind, key(last).as_bytes()),
            _ => String::new(),
        };
        (rows, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn page_sizes_follow_aip_158() {
        let mut v = Violations::new();
        assert_eq!(page_size(&mut v, "page_size", 0), 100);
        assert_eq!(page_size(&mut v, "page_size", 5000), 1000);
        assert_eq!(page_size(&mut v, "page_size", 7), 7);
        assert!(v.is_empty());
        page_size(&mut v, "page_size", -1);
        assert!(!v.is_empty());
    }

    #[test]
    fn a_token_for_other_filters_is_refused() {
        let token = encode("user=a", &5u64.to_be_bytes());
        let mut v = Violations::new();
        assert_eq!(decode(&mut v, "page_token", &token, "user=b"), None);
        assert!(!v.is_empty());
    }

    proptest! {
        #[test]
        fn tokens_round_trip(filters in ".{0,40}", position in proptest::collection::vec(any::<u8>(), 1..40)) {
            let token = encode(&filters, &position);
            let mut v = Violations::new();
            prop_assert_eq!(decode(&mut v, "page_token", &token, &filters), Some(position));
            prop_assert!(v.is_empty());
        }

        #[test]
        fn garbage_tokens_never_panic(token in ".{1,60}") {
            let mut v = Violations::new();
            let _ = decode(&mut v, "page_token", &token, "x");
        }
    }
}
