//! AIP-158 pagination, one way for every list in cpis: page sizes (0 means 100, at most
//! 1,000) and opaque page tokens. A token carries where the last page ended and a digest of
//! the filters it was issued for, so a token reused with other filters (or on another list) is
//! `INVALID_ARGUMENT` rather than silently skipping records. A token need not be secret: every
//! page is still filtered by the caller's access.

use crate::error::Violations;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DEFAULT_PAGE_SIZE: u64 = 100;
pub const MAX_PAGE_SIZE: u64 = 1000;
/// No token this service issues is longer; a longer one is refused before it is decoded.
pub const MAX_PAGE_TOKEN_BYTES: usize = 1024;

/// Where a page ended: the key the next page's rows follow.
pub trait Position: Sized {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl Position for u64 {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl Position for i64 {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(i64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl Position for String {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// `page_size` as AIP-158 reads it; a negative size is a violation of `page_size`.
pub fn page_size(v: &mut Violations, value: i32) -> u64 {
    match value {
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        0 => DEFAULT_PAGE_SIZE,
        n => (n as u64).min(MAX_PAGE_SIZE),
    }
}

fn filters_digest(filters: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest(&SHA256, filters.as_bytes()).as_ref()[..8]);
    out
}

fn encode(filters: &str, position: &[u8]) -> String {
    let mut raw = filters_digest(filters).to_vec();
    raw.extend_from_slice(position);
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode(token: &str, filters: &str) -> Option<Vec<u8>> {
    if token.len() > MAX_PAGE_TOKEN_BYTES {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    (raw.len() > 8 && raw[..8] == filters_digest(filters)).then(|| raw[8..].to_vec())
}

/// One page request of a list: its size, where the previous page ended (`None` for the first
/// page), and the filters its tokens are bound to. `filters` names the list and every filter
/// that shapes it, canonically (`"audit:nhs=...;ods=..."`), so equal requests bind alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<P> {
    pub size: u64,
    pub after: Option<P>,
    filters: String,
}

impl<P: Position> Page<P> {
    /// Reads `page_size` and `page_token`, recording any violation of either.
    pub fn parse(
        v: &mut Violations,
        page_size: i32,
        page_token: &str,
        filters: impl Into<String>,
    ) -> Self {
        let filters = filters.into();
        let size = self::page_size(v, page_size);
        let after = if page_token.is_empty() {
            None
        } else {
            let position = decode(page_token, &filters).and_then(|raw| P::from_bytes(&raw));
            if position.is_none() {
                v.add(
                    "page_token",
                    "must be a next_page_token from a previous call with the same filters",
                );
            }
            position
        };
        Page {
            size,
            after,
            filters,
        }
    }

    /// Rows are fetched `size + 1` at a time: the extra row says whether a next page exists.
    pub fn limit(&self) -> u64 {
        self.size + 1
    }

    /// The token resuming after `position` with these filters.
    pub fn token_after(&self, position: &P) -> String {
        encode(&self.filters, &position.to_bytes())
    }

    /// The page of `rows` (fetched with [`Page::limit`]) and the token resuming after its last
    /// row (empty at the end).
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> P) -> (Vec<T>, String) {
        let more = rows.len() as u64 > self.size;
        rows.truncate(self.size as usize);
        let next = match (more, rows.last()) {
            (true, Some(last)) => self.token_after(&key(last)),
            _ => String::new(),
        };
        (rows, next)
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
        assert_eq!(page_size(&mut v, 5000), 1000);
        assert_eq!(page_size(&mut v, 7), 7);
        assert!(v.is_empty());
        page_size(&mut v, -1);
        assert!(!v.is_empty());
    }

    #[test]
    fn a_token_for_other_filters_is_refused() {
        let mut v = Violations::new();
        let first: Page<u64> = Page::parse(&mut v, 2, "", "user=a");
        let token = first.token_after(&5);
        let same: Page<u64> = Page::parse(&mut v, 2, &token, "user=a");
        assert_eq!(same.after, Some(5));
        assert!(v.is_empty());
        let _other: Page<u64> = Page::parse(&mut v, 2, &token, "user=b");
        assert!(!v.is_empty());
    }

    #[test]
    fn a_token_too_long_to_be_ours_is_refused() {
        let mut v = Violations::new();
        let _: Page<String> = Page::parse(&mut v, 0, &"A".repeat(2000), "x");
        assert!(!v.is_empty());
    }

    #[test]
    fn finish_cuts_the_page_and_names_the_next() {
        let mut v = Violations::new();
        let page: Page<u64> = Page::parse(&mut v, 2, "", "list");
        let (rows, next) = page.finish(vec![1u64, 2, 3], |r| *r);
        assert_eq!(rows, [1, 2]);
        let again: Page<u64> = Page::parse(&mut v, 2, &next, "list");
        assert_eq!(again.after, Some(2));
        let (_, end) = page.finish(vec![1u64, 2], |r| *r);
        assert!(end.is_empty());
    }

    proptest! {
        #[test]
        fn tokens_round_trip(filters in ".{0,40}", position in ".{1,40}") {
            let mut v = Violations::new();
            let first: Page<String> = Page::parse(&mut v, 0, "", filters.clone());
            let token = first.token_after(&position);
            let next: Page<String> = Page::parse(&mut v, 0, &token, filters);
            prop_assert_eq!(next.after, Some(position));
            prop_assert!(v.is_empty());
        }

        #[test]
        fn garbage_tokens_never_panic(token in ".{1,60}") {
            let mut v = Violations::new();
            let _: Page<u64> = Page::parse(&mut v, 0, &token, "x");
        }
    }
}
