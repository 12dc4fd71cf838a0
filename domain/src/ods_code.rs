//! ODS codes: the identifiers of organisations and their sites.

use std::fmt;

/// An ODS code: 3 to 8 ASCII letters or digits, normalised to upper case. Whether the
/// organisation exists is the registry's question, not the parser's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OdsCodeError {
    #[error("must not be empty")]
    Empty,
    #[error("must be 3 to 8 letters or digits, such as RQX01 or 706")]
    Malformed,
}

impl OdsCode {
    pub fn parse(input: &str) -> Result<Self, OdsCodeError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(OdsCodeError::Empty);
        }
        if !(3..=8).contains(&trimmed.len()) || !trimmed.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(OdsCodeError::Malformed);
        }
        Ok(Self(trimmed.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A site belongs to an organisation when its code is the organisation's or starts with
    /// it (trust `RQX`, site `RQX01`).
    pub fn is_within(&self, organisation: &OdsCode) -> bool {
        self.0.starts_with(&organisation.0)
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OdsCode({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_case_and_accepts_the_shapes_of_domain_md() {
        for (raw, want) in [
            ("rqx", "RQX"),
            ("RQX01", "RQX01"),
            ("706", "706"),
            ("a81001", "A81001"),
            ("X26", "X26"),
        ] {
            assert_eq!(OdsCode::parse(raw).unwrap().as_str(), want);
        }
    }

    #[test]
    fn rejects_malformed_codes() {
        assert_eq!(OdsCode::parse(""), Err(OdsCodeError::Empty));
        for bad in ["AB", "ABCDEFGHI", "RQ-01", "R X01", "RQX01;"] {
            assert_eq!(OdsCode::parse(bad), Err(OdsCodeError::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_site_is_within_its_trust() {
        let trust = OdsCode::parse("RQX").unwrap();
        assert!(OdsCode::parse("RQX01").unwrap().is_within(&trust));
        assert!(OdsCode::parse("rqx").unwrap().is_within(&trust));
        assert!(!OdsCode::parse("RQY01").unwrap().is_within(&trust));
    }

    proptest! {
        #[test]
        fn valid_codes_round_trip(code in "[A-Za-z0-9]{3,8}") {
            let parsed = OdsCode::parse(&code).unwrap();
            prop_assert_eq!(parsed.as_str(), code.to_ascii_uppercase());
            prop_assert_eq!(OdsCode::parse(parsed.as_str()).unwrap(), parsed);
        }
    }
}
