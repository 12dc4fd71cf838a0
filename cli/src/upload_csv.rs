//! The upload file (API.md "The command line"): its structure is checked here, before anything
//! is sent, so that a malformed file is reported whole with line numbers and no half-sent
//! upload. Values are not judged here: the server answers them as record codes. Pure: no I/O,
//! no panics (it is fuzzed).

use cpis_proto::gateway::FlagRecord;
// The domain crate directly (platform re-exports the same type): this module is also built
// alone by the fuzz target `upload_csv`.
use cpis_domain::FlagType;

/// The header an upload file must start with, exactly.
pub const HEADER: [&str; 8] = [
    "nhs_number",
    "flag_type",
    "start_date",
    "end_date",
    "due_date",
    "emergency_phone",
    "office_hours_phone",
    "email",
];

/// The most records one upload may carry (the server refuses more).
pub const MAX_RECORDS: usize = 50_000;

/// One structural problem, at a 1-based line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvProblem {
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for CsvProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A record and the line it starts on, so a server's verdict can point back into the file.
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedRecord {
    pub line: u64,
    pub record: FlagRecord,
}

/// The records of a well-formed file, or every structural problem found.
pub fn parse_upload_csv(bytes: &[u8]) -> Result<Vec<FlagRecord>, Vec<CsvProblem>> {
    parse_located(bytes).map(|records| records.into_iter().map(|r| r.record).collect())
}

/// As [`parse_upload_csv`], keeping each record's line.
pub fn parse_located(bytes: &[u8]) -> Result<Vec<LocatedRecord>, Vec<CsvProblem>> {
    // Spreadsheets save CSV with a byte-order mark; it is not part of the header.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let (mut problems, unterminated_from) = quoting_problems(bytes);

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = Vec::new();
    let mut saw_header = false;
    let mut raw = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_byte_record(&mut raw) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                problems.push(CsvProblem {
                    line,
                    message: format!("unreadable: {e}"),
                });
                break;
            }
        }
        let line = raw.position().map_or(line, |p| p.line());
        if unterminated_from.is_some_and(|from| line >= from) {
            // Everything after an unclosed quote is one runaway field: already reported.
            break;
        }
        if !saw_header {
            saw_header = true;
            check_header(&raw, line, &mut problems);
            continue;
        }
        match to_record(&raw, line) {
            Ok(record) => records.push(LocatedRecord { line, record }),
            Err(problem) => problems.push(problem),
        }
    }

    if !saw_header {
        problems.push(CsvProblem {
            line: 1,
            message: format!(
                "the file is empty: it must start with the header `{}`",
                HEADER.join(",")
            ),
        });
    } else if records.is_empty() && problems.is_empty() {
        problems.push(CsvProblem {
            line: 2,
            message: "the file has a header but no records".into(),
        });
    }
    if records.len() > MAX_RECORDS {
        let line = records.get(MAX_RECORDS).map_or(0, |r| r.line);
        problems.push(CsvProblem {
            line,
            message: format!(
                "the file has {} records; one upload may carry at most {MAX_RECORDS}: split it",
                records.len()
            ),
        });
    }
    if problems.is_empty() {
        Ok(records)
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

fn check_header(raw: &csv::ByteRecord, line: u64, problems: &mut Vec<CsvProblem>) {
    let found: Vec<String> = raw
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_owned())
        .collect();
    if found.iter().map(String::as_str).ne(HEADER) {
        problems.push(CsvProblem {
            line,
            message: format!(
                "the header must be exactly `{}`; found `{}`",
                HEADER.join(","),
                found.join(",")
            ),
        });
    }
}

fn to_record(raw: &csv::ByteRecord, line: u64) -> Result<FlagRecord, CsvProblem> {
    if raw.len() != HEADER.len() {
        return Err(CsvProblem {
            line,
            message: format!(
                "has {} column{}; every record needs {} ({})",
                raw.len(),
                if raw.len() == 1 { "" } else { "s" },
                HEADER.len(),
                HEADER.join(",")
            ),
        });
    }
    let mut fields = Vec::with_capacity(HEADER.len());
    for (column, field) in HEADER.iter().zip(raw.iter()) {
        match std::str::from_utf8(field) {
            Ok(text) => fields.push(text.trim().to_owned()),
            Err(_) => {
                return Err(CsvProblem {
                    line,
                    message: format!("column {column} is not UTF-8 text"),
                });
            }
        }
    }
    let mut fields = fields.into_iter();
    let mut next = || fields.next().unwrap_or_default();
    let nhs_number = next();
    let flag_type = next();
    Ok(FlagRecord {
        nhs_number,
        // An unknown type is a value for the server to judge (RECORD_CODE_INVALID_FIELD).
        flag_type: FlagType::parse(&flag_type).map_or(0, i32::from),
        start_date: next(),
        end_date: next(),
        due_date: next(),
        emergency_phone: next(),
        office_hours_phone: next(),
        email: next(),
    })
}

/// RFC 4180 quoting, which the `csv` crate reads leniently: a quote inside an unquoted field,
/// text after a closing quote, a quoted field never closed. Returns the problems and the line
/// of an unclosed quote, past which nothing else can be read reliably.
fn quoting_problems(bytes: &[u8]) -> (Vec<CsvProblem>, Option<u64>) {
    enum State {
        FieldStart,
        Unquoted,
        Quoted { opened: u64 },
        AfterQuote { opened: u64 },
    }
    let mut problems: Vec<CsvProblem> = Vec::new();
    let mut report = |line: u64, message: &str| {
        if problems.last().is_none_or(|p| p.line != line) {
            problems.push(CsvProblem {
                line,
                message: message.to_owned(),
            });
        }
    };
    let mut line: u64 = 1;
    let mut state = State::FieldStart;
    for &b in bytes {
        state = match (state, b) {
            (State::FieldStart, b'"') => State::Quoted { opened: line },
            (State::FieldStart | State::Unquoted | State::AfterQuote { .. }, b',') => {
                State::FieldStart
            }
            (State::FieldStart | State::Unquoted | State::AfterQuote { .. }, b'\n') => {
                line += 1;
                State::FieldStart
            }
            (s @ (State::FieldStart | State::AfterQuote { .. }), b'\r') => s,
            (State::Unquoted, b'"') => {
                report(
                    line,
                    "a quote inside an unquoted field: quote the whole field and double the \
                     quotes inside it (\"say \"\"hello\"\"\")",
                );
                State::Unquoted
            }
            (State::FieldStart | State::Unquoted, _) => State::Unquoted,
            (State::Quoted { opened }, b'"') => State::AfterQuote { opened },
            (State::Quoted { opened }, b'\n') => {
                line += 1;
                State::Quoted { opened }
            }
            (s @ State::Quoted { .. }, _) => s,
            (State::AfterQuote { opened }, b'"') => State::Quoted { opened },
            (State::AfterQuote { .. }, _) => {
                report(
                    line,
                    "text after a closing quote: a quoted field must end at a comma or the end \
                     of the line",
                );
                State::Unquoted
            }
        };
    }
    let unterminated = match state {
        State::Quoted { opened } => {
            problems.push(CsvProblem {
                line: opened,
                message: "a quoted field opened on this line is never closed".into(),
            });
            Some(opened)
        }
        _ => None,
    };
    (problems, unterminated)
}

/// Writes records as an upload file (header first): what `cpis demo-data` produces and what
/// [`parse_upload_csv`] reads back.
pub fn write_upload_csv(records: &[FlagRecord]) -> std::io::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(HEADER)?;
    for r in records {
        let flag_type = FlagType::from_wire(r.flag_type).map_or("", FlagType::as_str);
        writer.write_record([
            r.nhs_number.as_str(),
            flag_type,
            &r.start_date,
            &r.end_date,
            &r.due_date,
            &r.emergency_phone,
            &r.office_hours_phone,
            &r.email,
        ])?;
    }
    writer
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD_HEADER: &str = "nhs_number,flag_type,start_date,end_date,due_date,emergency_phone,office_hours_phone,email\n";

    fn lines_of(problems: &[CsvProblem]) -> Vec<u64> {
        problems.iter().map(|p| p.line).collect()
    }

    #[test]
    fn reads_records_with_flag_type_spellings_and_trims_values() {
        let file = format!(
            "{GOOD_HEADER}9434765919, cpp ,2024-01-01,,,020 7364 4079,,\n\
             9434765919,FLAG_TYPE_UCPP,2024-01-01,,2024-09-01,020 7364 4079,,a@b.org\n\
             9434765919,xyz,2024-01-01,,,020 7364 4079,,\n"
        );
        let records = parse_located(file.as_bytes()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].line, 2);
        assert_eq!(records[0].record.flag_type, i32::from(FlagType::Cpp));
        assert_eq!(records[1].record.flag_type, i32::from(FlagType::Ucpp));
        assert_eq!(records[1].record.email, "a@b.org");
        // Unknown flag types are values for the server to judge, not structural problems.
        assert_eq!(records[2].record.flag_type, 0);
    }

    #[test]
    fn a_wrong_header_is_reported_on_line_1() {
        let problems =
            parse_upload_csv(b"nhs,flag_type\n9434765919,cpp,2024-01-01,,,1,,\n").unwrap_err();
        assert_eq!(lines_of(&problems), [1]);
        assert!(problems[0].message.contains("header"), "{problems:?}");
    }

    #[test]
    fn a_wrong_column_count_is_reported_with_every_line_number() {
        let file = format!(
            "{GOOD_HEADER}9434765919,cpp,2024-01-01,,,1,,\n\
             9434765919,cpp,2024-01-01,,,1,,,\n\
             9434765919,cpp,2024-01-01,,,1,,\n\
             9434765919\n"
        );
        let problems = parse_upload_csv(file.as_bytes()).unwrap_err();
        assert_eq!(lines_of(&problems), [3, 5]);
        assert!(problems[0].message.contains("9 columns"), "{problems:?}");
        assert!(problems[1].message.contains("1 column;"), "{problems:?}");
    }

    #[test]
    fn bad_quoting_is_reported_with_its_line() {
        let file =
            format!("{GOOD_HEADER}9434765919,c\"pp,2024-01-01,,,1,,\n\"9434765919\"x,cpp,,,,1,,\n");
        let problems = parse_upload_csv(file.as_bytes()).unwrap_err();
        assert_eq!(lines_of(&problems), [2, 3]);
        let file =
            format!("{GOOD_HEADER}9434765919,cpp,2024-01-01,,,1,,\n9434765919,\"cpp,,,\n,,\n");
        let problems = parse_upload_csv(file.as_bytes()).unwrap_err();
        assert_eq!(lines_of(&problems), [3]);
        assert!(problems[0].message.contains("never closed"), "{problems:?}");
    }

    #[test]
    fn quoted_fields_may_hold_commas_quotes_and_newlines() {
        let file = format!(
            "{GOOD_HEADER}9434765919,cpp,2024-01-01,,,\"1, \"\"2\"\"\",,\"a\nb\"\n9434765919,lac,2024-01-01,,,1,,\n"
        );
        let records = parse_located(file.as_bytes()).unwrap();
        assert_eq!(records[0].record.emergency_phone, "1, \"2\"");
        assert_eq!(records[0].record.email, "a\nb");
        assert_eq!(records[1].line, 4);
    }

    #[test]
    fn an_empty_file_and_a_header_alone_are_refused() {
        assert_eq!(lines_of(&parse_upload_csv(b"").unwrap_err()), [1]);
        assert_eq!(
            lines_of(&parse_upload_csv(GOOD_HEADER.as_bytes()).unwrap_err()),
            [2]
        );
    }

    #[test]
    fn a_byte_order_mark_and_crlf_line_ends_are_accepted() {
        let file = format!(
            "\u{feff}{}\r\n9434765919,cpp,2024-01-01,,,1,,\r\n",
            GOOD_HEADER.trim_end()
        );
        assert_eq!(parse_upload_csv(file.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn binary_garbage_is_reported_not_panicked_on() {
        let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let problems = parse_upload_csv(&garbage).unwrap_err();
        assert!(!problems.is_empty());
        assert_eq!(problems[0].line, 1);
    }

    #[test]
    fn more_than_fifty_thousand_records_are_refused_before_sending() {
        let mut file = GOOD_HEADER.to_owned();
        for _ in 0..=MAX_RECORDS {
            file.push_str("9434765919,cpp,2024-01-01,,,1,,\n");
        }
        let problems = parse_upload_csv(file.as_bytes()).unwrap_err();
        assert_eq!(lines_of(&problems), [MAX_RECORDS as u64 + 2]);
    }

    fn value() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,\"\n@.+\r-]{0,12}".prop_map(|s| s.trim().to_owned())
    }

    fn record() -> impl Strategy<Value = FlagRecord> {
        (
            (value(), 0..4i32, value(), value()),
            (value(), value(), value(), value()),
        )
            .prop_map(
                |((nhs, t, start, end), (due, phone, office, email))| FlagRecord {
                    nhs_number: nhs,
                    flag_type: t,
                    start_date: start,
                    end_date: end,
                    due_date: due,
                    emergency_phone: phone,
                    office_hours_phone: office,
                    email,
                },
            )
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_upload_csv(&bytes);
        }

        #[test]
        fn never_panics_on_csv_like_text(text in "[a-z0-9,\"\r\n ]{0,400}") {
            let with_header = format!("{GOOD_HEADER}{text}");
            let _ = parse_upload_csv(with_header.as_bytes());
            let _ = parse_upload_csv(text.as_bytes());
        }

        #[test]
        fn round_trips_the_records_it_writes(records in proptest::collection::vec(record(), 1..20)) {
            let bytes = write_upload_csv(&records).unwrap();
            prop_assert_eq!(parse_upload_csv(&bytes), Ok(records));
        }
    }
}
