//! The NHS number: the key every lookup, flag and attendance hangs on.

use std::fmt;
use std::str::FromStr;

/// A valid NHS number: ten digits whose tenth is the Modulus 11 check digit of the first nine.
///
/// `Debug` and `Display` redact the number so it can never reach a log line by accident; the
/// digits are only available through [`NhsNumber::as_str`], which callers use on purpose.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber([u8; 10]);

/// Why a string is not an NHS number, in words an integrator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("must not be empty")]
    Empty,
    #[error("must be 10 digits (spaces allowed between them)")]
    NotTenDigits,
    #[error("is not a valid NHS number: its check digit (Modulus 11) does not match")]
    CheckDigit,
}

impl NhsNumber {
    /// Parses ten digits, ignoring ASCII spaces wherever they were typed (`943 476 5919`).
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        if input.trim().is_empty() {
            return Err(NhsNumberError::Empty);
        }
        let mut digits = [0u8; 10];
        let mut count = 0;
        for c in input.chars() {
            match c {
                ' ' => continue,
                '0'..='9' if count < 10 => {
                    digits[count] = c as u8;
                    count += 1;
                }
                _ => return Err(NhsNumberError::NotTenDigits),
            }
        }
        if count != 10 {
            return Err(NhsNumberError::NotTenDigits);
        }
        match check_digit(&digits) {
            Some(d) if d == digits[9] - b'0' => Ok(Self(digits)),
            _ => Err(NhsNumberError::CheckDigit),
        }
    }

    /// The normalised ten digits, for storage and the wire. Never log this.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// `999 000 0000`–`999 999 9999` is never issued: synthetic and test data live there.
    pub fn is_test_range(&self) -> bool {
        self.0.starts_with(b"999")
    }

    /// Builds a valid number from nine leading digits by appending their check digit, or
    /// `None` when those nine digits have no valid check digit. For synthetic data and tests.
    pub fn from_first_nine(first_nine: u32) -> Option<Self> {
        if first_nine > 999_999_999 {
            return None;
        }
        let mut digits = [0u8; 10];
        let text = format!("{first_nine:09}");
        digits[..9].copy_from_slice(text.as_bytes());
        let d = check_digit(&digits)?;
        digits[9] = b'0' + d;
        Some(Self(digits))
    }
}

/// Modulus 11: weights 10..2 on digits 1–9; 11 − (sum mod 11); 11 means 0; 10 means no valid
/// number has these nine digits.
fn check_digit(digits: &[u8; 10]) -> Option<u8> {
    let sum: u32 = digits[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        d => Some(d as u8),
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<nhs-number>")
    }
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_known_valid_numbers_computed_here() {
        for n in ["9434765919", "9000000009", "9990000018", "9990000026"] {
            let parsed = NhsNumber::parse(n).expect(n);
            assert_eq!(parsed.as_str(), n);
        }
    }

    #[test]
    fn accepts_spaces_as_typed() {
        assert_eq!(
            NhsNumber::parse("943 476 5919").unwrap().as_str(),
            "9434765919"
        );
        assert_eq!(
            NhsNumber::parse(" 9434765919 ").unwrap().as_str(),
            "9434765919"
        );
    }

    #[test]
    fn rejects_bad_check_digits_and_shapes() {
        assert_eq!(
            NhsNumber::parse("9876544321"),
            Err(NhsNumberError::CheckDigit)
        );
        assert_eq!(
            NhsNumber::parse("9111111124"),
            Err(NhsNumberError::CheckDigit)
        );
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::Empty));
        assert_eq!(
            NhsNumber::parse("943476591"),
            Err(NhsNumberError::NotTenDigits)
        );
        assert_eq!(
            NhsNumber::parse("94347659190"),
            Err(NhsNumberError::NotTenDigits)
        );
        assert_eq!(
            NhsNumber::parse("943-476-5919"),
            Err(NhsNumberError::NotTenDigits)
        );
        assert_eq!(
            NhsNumber::parse("９４３４７６５９１９"),
            Err(NhsNumberError::NotTenDigits)
        );
    }

    #[test]
    fn every_number_starting_999000000_is_invalid() {
        for last in 0..10 {
            assert!(NhsNumber::parse(&format!("999000000{last}")).is_err());
        }
        assert!(NhsNumber::from_first_nine(999_000_000).is_none());
    }

    #[test]
    fn recognises_the_test_range() {
        assert!(NhsNumber::parse("9990000018").unwrap().is_test_range());
        assert!(!NhsNumber::parse("9434765919").unwrap().is_test_range());
    }

    #[test]
    fn debug_and_display_redact_the_digits() {
        let n = NhsNumber::parse("9434765919").unwrap();
        for shown in [format!("{n}"), format!("{n:?}"), format!("{:?}", Some(n))] {
            assert!(!shown.contains("9434765919"), "{shown}");
            assert!(!shown.contains("5919"), "{shown}");
        }
    }

    proptest! {
        #[test]
        fn valid_numbers_round_trip(first_nine in 0u32..=999_999_999) {
            if let Some(n) = NhsNumber::from_first_nine(first_nine) {
                let text = n.as_str().to_owned();
                prop_assert_eq!(NhsNumber::parse(&text), Ok(n));
                let spaced = format!("{} {} {}", &text[..3], &text[3..6], &text[6..]);
                prop_assert_eq!(NhsNumber::parse(&spaced), Ok(n));
            }
        }

        #[test]
        fn every_single_digit_substitution_is_rejected(
            first_nine in 0u32..=999_999_999,
            position in 0usize..10,
            replacement in 0u8..10,
        ) {
            if let Some(n) = NhsNumber::from_first_nine(first_nine) {
                let mut bytes = n.as_str().as_bytes().to_vec();
                prop_assume!(bytes[position] != b'0' + replacement);
                bytes[position] = b'0' + replacement;
                let changed = String::from_utf8(bytes).unwrap();
                prop_assert!(NhsNumber::parse(&changed).is_err());
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = NhsNumber::parse(&s);
        }
    }
}
