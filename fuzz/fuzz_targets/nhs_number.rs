//! NHS number parsing: never panics, and whatever it accepts is ten digits whose check digit
//! holds, that parse back to the same number, and that never show in `Display`/`Debug`.

#![no_main]

use cpis_domain::NhsNumber;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(n) = NhsNumber::parse(text) {
        let digits = n.as_str();
        assert_eq!(digits.len(), 10);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        // The input was the same digits, spaces aside.
        let typed: String = text.chars().filter(|c| *c != ' ').collect();
        assert_eq!(typed, digits);
        assert_eq!(NhsNumber::parse(digits), Ok(n));
        // The check digit of the first nine is the tenth.
        let first_nine: u32 = digits[..9].parse().unwrap();
        assert_eq!(NhsNumber::from_first_nine(first_nine), Some(n));
        assert!(!format!("{n} {n:?}").contains(digits));
    }
    let _ = cpis_domain::OdsCode::parse(text);
    let _ = cpis_domain::parse_date(text);
});
