//! The CLI's upload CSV check (`cli/src/upload_csv.rs`, built here alone): arbitrary bytes never
//! panic it; every problem it reports has a line number within the file; what it accepts it
//! writes back and reads again to the same records.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../cli/src/upload_csv.rs"]
#[allow(dead_code)]
mod upload_csv;

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    match upload_csv::parse_upload_csv(data) {
        Ok(records) => {
            assert!(!records.is_empty());
            let written = upload_csv::write_upload_csv(&records).expect("writing to memory");
            let again = upload_csv::parse_upload_csv(&written).expect("what it wrote must parse");
            assert_eq!(again.len(), records.len());
            for (a, b) in records.iter().zip(&again) {
                assert_eq!(a.nhs_number, b.nhs_number);
                assert_eq!(a.start_date, b.start_date);
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in problems {
                // One past the last line is where "no records after the header" is reported.
                assert!(p.line >= 1 && p.line <= lines + 1, "line {} of {lines}", p.line);
            }
        }
    }
});
