//! An upload's report, bounded so that it always reaches the caller: one `RecordResult` per
//! record (API.md), each echoing at most 16 bytes of the NHS number and a message of at most
//! 48 bytes, so the report of the largest upload (50,000 records) stays under the 4 MiB a stock
//! gRPC client receives by default. A report its caller cannot receive would be worse than a
//! failure: the upload is committed, the LA is told it failed, and a resend with the same
//! upload_id gets the same undeliverable report back for ever.

use cpis_proto::gateway::{RecordCode, RecordResult, UploadFlagsResponse, UploadStatus};
use platform::requests::{MAX_RESULT_MESSAGE_BYTES, MAX_RESULT_NHS_NUMBER_BYTES};

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn cap(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One record's result, its echo and message capped.
pub fn result(index: u32, nhs_number: &str, code: RecordCode, message: &str) -> RecordResult {
    RecordResult {
        index,
        nhs_number: cap(nhs_number, MAX_RESULT_NHS_NUMBER_BYTES).to_owned(),
        code: code.into(),
        message: cap(message, MAX_RESULT_MESSAGE_BYTES).to_owned(),
    }
}

/// The report of `results` (one per record, in upload order), with its counts and status.
pub fn report(upload_id: &str, results: Vec<RecordResult>) -> UploadFlagsResponse {
    let accepted = results
        .iter()
        .filter(|r| r.code == i32::from(RecordCode::Accepted))
        .count() as u32;
    let rejected = results.len() as u32 - accepted;
    let status = match (accepted, rejected) {
        (_, 0) => UploadStatus::Success,
        (0, _) => UploadStatus::Failed,
        _ => UploadStatus::Partial,
    };
    UploadFlagsResponse {
        upload_id: upload_id.to_owned(),
        status: status.into(),
        results,
        accepted,
        rejected,
    }
}

/// A stored report as a resend returns it: capped again, because reports stored before the
/// caps echoed whole NHS numbers and long messages, and one too large to receive would
/// otherwise be returned, undeliverable, to every resend of its upload.
pub fn bounded(mut stored: UploadFlagsResponse) -> UploadFlagsResponse {
    for r in &mut stored.results {
        if r.nhs_number.len() > MAX_RESULT_NHS_NUMBER_BYTES {
            r.nhs_number = cap(&r.nhs_number, MAX_RESULT_NHS_NUMBER_BYTES).to_owned();
        }
        if r.message.len() > MAX_RESULT_MESSAGE_BYTES {
            r.message = cap(&r.message, MAX_RESULT_MESSAGE_BYTES).to_owned();
        }
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::requests::{
        MAX_RECORDS_PER_UPLOAD, MAX_UPLOAD_ID_CHARS, MAX_UPLOAD_REPORT_BYTES,
    };
    use prost::Message;

    /// Every field at its largest: the highest indexes, an echo and a message cut from inputs
    /// far over their caps (in four-byte characters, the widest), the longest upload_id in
    /// four-byte characters, and the counts at their largest.
    fn worst_case() -> UploadFlagsResponse {
        let huge = "\u{10FFFF}".repeat(1024);
        let results = (0..MAX_RECORDS_PER_UPLOAD as u32)
            .map(|i| result(u32::MAX - i, &huge, RecordCode::TooManyEpisodes, &huge))
            .collect();
        let mut report = report(&"\u{10FFFF}".repeat(MAX_UPLOAD_ID_CHARS), results);
        (report.accepted, report.rejected) = (u32::MAX, u32::MAX);
        report
    }

    #[test]
    fn the_largest_upload_report_fits_a_stock_clients_4_mib() {
        let report = worst_case();
        assert_eq!(report.results.len() as u64, MAX_RECORDS_PER_UPLOAD);
        assert!(
            report
                .results
                .iter()
                .all(|r| r.nhs_number.len() == MAX_RESULT_NHS_NUMBER_BYTES
                    && r.message.len() == MAX_RESULT_MESSAGE_BYTES)
        );
        let size = report.encoded_len();
        assert!(
            size <= MAX_UPLOAD_REPORT_BYTES && MAX_UPLOAD_REPORT_BYTES == 4 * 1024 * 1024,
            "{size} bytes"
        );
    }

    #[test]
    fn echoes_and_messages_are_cut_on_a_character_boundary() {
        assert_eq!(cap("9434765919", 16), "9434765919");
        // 15 ASCII bytes then a two-byte character: cutting at 16 would split it.
        let cut = cap("123456789012345é6", 16);
        assert_eq!(cut, "123456789012345");
        assert_eq!(cap("€€€€€€", 16), "€€€€€");
        let r = result(
            3,
            &"9".repeat(40),
            RecordCode::InvalidNhsNumber,
            &"m".repeat(99),
        );
        assert_eq!((r.nhs_number.len(), r.message.len(), r.index), (16, 48, 3));
        assert_eq!(r.code(), RecordCode::InvalidNhsNumber);
    }

    #[test]
    fn a_stored_report_from_before_the_caps_is_capped_when_returned_again() {
        let old = UploadFlagsResponse {
            upload_id: "u".into(),
            status: UploadStatus::Failed.into(),
            results: vec![RecordResult {
                index: 0,
                nhs_number: "x".repeat(1 << 20),
                code: RecordCode::InvalidNhsNumber.into(),
                message: format!("nhs_number: {}", "long ".repeat(100)),
            }],
            accepted: 0,
            rejected: 1,
        };
        let again = bounded(old.clone());
        assert_eq!(
            again.results[0].nhs_number.len(),
            MAX_RESULT_NHS_NUMBER_BYTES
        );
        assert!(again.results[0].message.starts_with("nhs_number: long"));
        assert_eq!(again.results[0].message.len(), MAX_RESULT_MESSAGE_BYTES);
        assert_eq!((again.status, again.rejected), (old.status, old.rejected));
        // A report within the caps comes back unchanged.
        assert_eq!(bounded(again.clone()), again);
    }
}
