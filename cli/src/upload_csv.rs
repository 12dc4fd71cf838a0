//! The upload file (API.md "The command line"): its structure is checked here, before anything
//! is sent, so that a malformed file is reported whole with line numbers and no half-sent
//! upload. Values are not judged here: the server answers them as record codes. The file is
//! read as a stream, one record at a time ([`UploadReader`]), so checking or sending a file of
//! any size holds one record, not the file. No I/O of its own and no panics (it is fuzzed).

use cpis_proto::gateway::FlagRecord;
// The domain crate directly (platform re-exports the same type): this module is also built
// alone by the fuzz target `upload_csv`.
use cpis_domain::FlagType;
use std::io::Read;

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

/// The most problems kept (the first by line); the rest are counted. A binary file would
/// otherwise hold one for each of its lines.
pub const MAX_PROBLEMS_KEPT: usize = 100;

/// The longest a record may be, quoting included. The largest legitimate one is well under 2
/// KiB; without a bound, a quote never closed (or a file without line ends) would be read into
/// memory whole as one field.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// What the `csv` reader buffers by default; [`UploadReader::with_buffer_capacity`] changes it.
const DEFAULT_BUFFER: usize = 8 * 1024;

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

/// Every structural problem of a file: the first [`MAX_PROBLEMS_KEPT`] by line, and how many
/// there are in all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CsvProblems {
    /// In line order (problems on one line in the order they were found).
    pub first: Vec<CsvProblem>,
    /// At least `first.len()`.
    pub total: u64,
}

impl CsvProblems {
    fn push(&mut self, problem: CsvProblem) {
        self.total += 1;
        self.first.push(problem);
        // Trimmed now and then rather than at every push: a stable sort keeps the order of
        // problems found on one line, and what is dropped can never be among the first.
        if self.first.len() >= 2 * MAX_PROBLEMS_KEPT {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.first.sort_by_key(|p| p.line);
        self.first.truncate(MAX_PROBLEMS_KEPT);
    }

    /// `sources` in order: on one line, a problem of an earlier source comes first.
    fn merged(sources: [CsvProblems; 3]) -> CsvProblems {
        let mut all = CsvProblems::default();
        for source in sources {
            all.total += source.total;
            all.first.extend(source.first);
        }
        all.trim();
        all
    }
}

/// A record and the line it starts on, so a server's verdict can point back into the file.
#[derive(Debug, Clone, PartialEq)]
pub struct LocatedRecord {
    pub line: u64,
    pub record: FlagRecord,
}

/// The records of a well-formed file, or its structural problems (the first
/// [`MAX_PROBLEMS_KEPT`]).
pub fn parse_upload_csv(bytes: &[u8]) -> Result<Vec<FlagRecord>, Vec<CsvProblem>> {
    parse_located(bytes).map(|records| records.into_iter().map(|r| r.record).collect())
}

/// As [`parse_upload_csv`], keeping each record's line.
pub fn parse_located(bytes: &[u8]) -> Result<Vec<LocatedRecord>, Vec<CsvProblem>> {
    let mut reader = UploadReader::new(bytes);
    let records: Vec<LocatedRecord> = reader.by_ref().collect();
    match reader.finish().0 {
        Ok(_) => Ok(records),
        Err(problems) => Err(problems.first),
    }
}

/// Reads an upload file from `R` one record at a time, checking its structure as it goes:
/// iterate for the well-formed records (a malformed one is a problem, not an item), then
/// [`UploadReader::finish`] says whether the file as a whole is well formed. Records come out
/// as they are read, before the end of the file is known: a caller that sends them must not
/// let the upload take effect unless `finish` returns `Ok`.
pub struct UploadReader<R> {
    csv: csv::Reader<Watched<R>>,
    raw: csv::ByteRecord,
    /// Records the `csv` reader returned, the header included.
    arrived: u64,
    /// The outcome of the records on the last lines, by line, not yet decided: if a quote
    /// opened on or before a line is never closed, everything from there on is one runaway
    /// field, already reported. Decided once the quoting check has read past the line outside
    /// any quote opened by then (bounded: no quoted field is longer than a record may be), or
    /// at the end.
    held: std::collections::VecDeque<LineOutcome>,
    saw_header: bool,
    /// Well-formed records, and the line of the first one past [`MAX_RECORDS`].
    records: u64,
    first_excess_line: Option<u64>,
    problems: CsvProblems,
    /// Why reading stopped early, reported after the pending records' problems.
    read_error: Option<CsvProblem>,
    ended: bool,
}

/// What the records starting on one line amount to (the `csv` reader also ends a record at a
/// lone carriage return, so one line may start several).
#[derive(Default)]
struct LineOutcome {
    line: u64,
    header: bool,
    records: u64,
    problems: CsvProblems,
}

impl<R: Read> UploadReader<R> {
    pub fn new(reader: R) -> Self {
        Self::with_buffer_capacity(reader, DEFAULT_BUFFER)
    }

    /// With the `csv` reader buffering `capacity` bytes at a time: what it holds of the file
    /// besides the current record.
    pub fn with_buffer_capacity(reader: R, capacity: usize) -> Self {
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(capacity.max(1))
            .from_reader(Watched::new(reader));
        UploadReader {
            csv,
            raw: csv::ByteRecord::new(),
            arrived: 0,
            held: std::collections::VecDeque::new(),
            saw_header: false,
            records: 0,
            first_excess_line: None,
            problems: CsvProblems::default(),
            read_error: None,
            ended: false,
        }
    }

    /// The next well-formed record; `None` at the end of the file (or where it stopped being
    /// readable).
    pub fn next_record(&mut self) -> Option<LocatedRecord> {
        while !self.ended {
            let line = self.csv.position().line();
            match self.csv.read_byte_record(&mut self.raw) {
                Ok(true) => {}
                Ok(false) => self.ended = true,
                Err(e) => {
                    self.read_error = Some(match self.csv.get_ref().quoting.too_long {
                        Some(start) => CsvProblem {
                            line: start,
                            message: format!(
                                "the record starting on this line is longer than \
                                 {MAX_RECORD_BYTES} bytes (is a quoted field never closed?); \
                                 the rest of the file was not read"
                            ),
                        },
                        None => CsvProblem {
                            line,
                            message: format!("unreadable: {e}"),
                        },
                    });
                    self.ended = true;
                }
            }
            if self.ended {
                break;
            }
            let line = self.raw.position().map_or(line, |p| p.line());
            self.decide_held();
            if self.held.back().is_none_or(|last| last.line != line) {
                self.held.push_back(LineOutcome {
                    line,
                    ..LineOutcome::default()
                });
            }
            let Some(outcome) = self.held.back_mut() else {
                continue;
            };
            self.arrived += 1;
            if self.arrived == 1 {
                outcome.header = true;
                if let Some(problem) = header_problem(&self.raw, line) {
                    outcome.problems.push(problem);
                }
                continue;
            }
            match to_record(&self.raw, line) {
                Ok(record) => {
                    outcome.records += 1;
                    return Some(LocatedRecord { line, record });
                }
                Err(problem) => outcome.problems.push(problem),
            }
        }
        None
    }

    /// Commits the held lines no quote still open can run away from.
    fn decide_held(&mut self) {
        while let Some(first) = self.held.front()
            && self.csv.get_ref().quoting.read_past(first.line)
            && let Some(first) = self.held.pop_front()
        {
            self.commit(first);
        }
    }

    fn commit(&mut self, outcome: LineOutcome) {
        self.saw_header |= outcome.header;
        let before = self.records;
        self.records += outcome.records;
        if before <= MAX_RECORDS as u64 && self.records > MAX_RECORDS as u64 {
            self.first_excess_line = Some(outcome.line);
        }
        // Kept problems of one line are the first found on it: appended, they stay in order.
        self.problems.total += outcome.problems.total - outcome.problems.first.len() as u64;
        for problem in outcome.problems.first {
            self.problems.push(problem);
        }
    }

    /// Reads whatever is left and judges the file whole: the number of records, or every
    /// problem. Also gives the reader back (to finish a hash of what was read, say).
    pub fn finish(mut self) -> (Result<u64, CsvProblems>, R) {
        while self.next_record().is_some() {}
        let quoting = self.csv.get_mut().quoting.finish();
        while let Some(outcome) = self.held.pop_front() {
            let runaway = quoting
                .unterminated_from
                .is_some_and(|from| outcome.line >= from);
            if !runaway {
                self.commit(outcome);
            }
        }
        if let Some(problem) = self.read_error.take() {
            self.problems.push(problem);
        }
        let mut at_end = CsvProblems::default();
        if !self.saw_header {
            at_end.push(CsvProblem {
                line: 1,
                message: format!(
                    "the file is empty: it must start with the header `{}`",
                    HEADER.join(",")
                ),
            });
        } else if self.records == 0 && self.problems.total == 0 && quoting.problems.total == 0 {
            at_end.push(CsvProblem {
                line: 2,
                message: "the file has a header but no records".into(),
            });
        }
        if self.records > MAX_RECORDS as u64 {
            at_end.push(CsvProblem {
                line: self.first_excess_line.unwrap_or(0),
                message: format!(
                    "the file has {} records; one upload may carry at most {MAX_RECORDS}: split it",
                    self.records
                ),
            });
        }
        // The quoting problems first, as when the whole file was scanned for them up front.
        let problems = CsvProblems::merged([quoting.problems, self.problems, at_end]);
        let reader = self.csv.into_inner().inner;
        if problems.total == 0 {
            (Ok(self.records), reader)
        } else {
            (Err(problems), reader)
        }
    }
}

impl<R: Read> Iterator for UploadReader<R> {
    type Item = LocatedRecord;

    fn next(&mut self) -> Option<LocatedRecord> {
        self.next_record()
    }
}

/// The bytes on their way to the `csv` reader: a leading byte-order mark dropped (spreadsheets
/// save CSV with one; it is not part of the header) and every byte checked for quoting.
struct Watched<R> {
    inner: R,
    /// The file's first bytes, read ahead to look for the byte-order mark.
    head: [u8; 3],
    head_len: usize,
    head_pos: usize,
    started: bool,
    quoting: QuotingCheck,
}

const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

impl<R: Read> Watched<R> {
    fn new(inner: R) -> Self {
        Watched {
            inner,
            head: [0; 3],
            head_len: 0,
            head_pos: 0,
            started: false,
            quoting: QuotingCheck::new(),
        }
    }

    fn read_head(&mut self) -> std::io::Result<()> {
        while self.head_len < self.head.len() {
            match self.inner.read(&mut self.head[self.head_len..]) {
                Ok(0) => break,
                Ok(n) => self.head_len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.head[..self.head_len] == *BYTE_ORDER_MARK {
            self.head_len = 0;
        }
        Ok(())
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.started {
            self.started = true;
            self.read_head()?;
        }
        let n = if self.head_pos < self.head_len {
            let n = (self.head_len - self.head_pos).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            n
        } else {
            self.inner.read(buf)?
        };
        if !self.quoting.feed(&buf[..n]) {
            // Stops the `csv` reader before it buffers the runaway record.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a record longer than {MAX_RECORD_BYTES} bytes"),
            ));
        }
        Ok(n)
    }
}

#[derive(Clone, Copy)]
enum QuoteState {
    FieldStart,
    Unquoted,
    Quoted { opened: u64 },
    AfterQuote { opened: u64 },
}

/// RFC 4180 quoting, which the `csv` crate reads leniently: a quote inside an unquoted field,
/// text after a closing quote, a quoted field never closed. Fed the file's bytes as they are
/// read; also measures each record's length.
struct QuotingCheck {
    state: QuoteState,
    line: u64,
    last_reported: Option<u64>,
    problems: CsvProblems,
    /// Bytes since the last line end outside a quoted field, and the line that record began.
    record_bytes: usize,
    record_line: u64,
    /// Set when a record grew past [`MAX_RECORD_BYTES`]: nothing more is read.
    too_long: Option<u64>,
}

/// What the quoting check concluded at the end of the file.
struct Quoting {
    problems: CsvProblems,
    /// The line of a quote never closed, past which nothing else can be read reliably.
    unterminated_from: Option<u64>,
}

impl QuotingCheck {
    fn new() -> Self {
        QuotingCheck {
            state: QuoteState::FieldStart,
            line: 1,
            last_reported: None,
            problems: CsvProblems::default(),
            record_bytes: 0,
            record_line: 1,
            too_long: None,
        }
    }

    fn report(&mut self, message: &str) {
        if self.last_reported != Some(self.line) {
            self.last_reported = Some(self.line);
            self.problems.push(CsvProblem {
                line: self.line,
                message: message.to_owned(),
            });
        }
    }

    /// Checks the next bytes of the file; false once a record is too long to read.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        use QuoteState::{AfterQuote, FieldStart, Quoted, Unquoted};
        if self.too_long.is_some() {
            return false;
        }
        for &b in bytes {
            self.state = match (self.state, b) {
                (FieldStart, b'"') => Quoted { opened: self.line },
                (FieldStart | Unquoted | AfterQuote { .. }, b',') => FieldStart,
                (FieldStart | Unquoted | AfterQuote { .. }, b'\n') => {
                    self.line += 1;
                    FieldStart
                }
                (s @ (FieldStart | AfterQuote { .. }), b'\r') => s,
                (Unquoted, b'"') => {
                    self.report(
                        "a quote inside an unquoted field: quote the whole field and double the \
                         quotes inside it (\"say \"\"hello\"\"\")",
                    );
                    Unquoted
                }
                (FieldStart | Unquoted, _) => Unquoted,
                (Quoted { opened }, b'"') => AfterQuote { opened },
                (Quoted { opened }, b'\n') => {
                    self.line += 1;
                    Quoted { opened }
                }
                (s @ Quoted { .. }, _) => s,
                (AfterQuote { opened }, b'"') => Quoted { opened },
                (AfterQuote { .. }, _) => {
                    self.report(
                        "text after a closing quote: a quoted field must end at a comma or the \
                         end of the line",
                    );
                    Unquoted
                }
            };
            // The `csv` reader ends a record at either line-end byte outside quotes.
            if matches!(b, b'\n' | b'\r') && !matches!(self.state, Quoted { .. }) {
                self.record_bytes = 0;
                self.record_line = self.line;
            } else {
                self.record_bytes += 1;
                if self.record_bytes > MAX_RECORD_BYTES {
                    self.too_long = Some(self.record_line);
                    return false;
                }
            }
        }
        true
    }

    /// Whether the check has read past `line` and is outside every quote opened up to it: a
    /// quote never closed can then only have opened after it.
    fn read_past(&self, line: u64) -> bool {
        let open_since = match self.state {
            QuoteState::Quoted { opened } | QuoteState::AfterQuote { opened } => Some(opened),
            QuoteState::FieldStart | QuoteState::Unquoted => None,
        };
        self.line > line && open_since.is_none_or(|opened| opened > line)
    }

    fn finish(&mut self) -> Quoting {
        let mut problems = std::mem::take(&mut self.problems);
        let unterminated_from = match self.state {
            // A record too long was reported as such: whether its quote closes is unknown.
            QuoteState::Quoted { opened } if self.too_long.is_none() => {
                problems.push(CsvProblem {
                    line: opened,
                    message: "a quoted field opened on this line is never closed".into(),
                });
                Some(opened)
            }
            _ => None,
        };
        Quoting {
            problems,
            unterminated_from,
        }
    }
}

fn header_problem(raw: &csv::ByteRecord, line: u64) -> Option<CsvProblem> {
    let found: Vec<String> = raw
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_owned())
        .collect();
    if found.iter().map(String::as_str).ne(HEADER) {
        Some(CsvProblem {
            line,
            message: format!(
                "the header must be exactly `{}`; found `{}`",
                HEADER.join(","),
                found.join(",")
            ),
        })
    } else {
        None
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

    /// Hands out at most a few bytes a read (the sizes cycling, so a read boundary falls
    /// everywhere, inside the byte-order mark too) and counts what it handed out.
    struct Trickle<'a> {
        bytes: &'a [u8],
        sizes: std::iter::Cycle<std::ops::RangeInclusive<usize>>,
        given: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl<'a> Trickle<'a> {
        fn new(bytes: &'a [u8], most: usize) -> (Self, std::rc::Rc<std::cell::Cell<usize>>) {
            let given = std::rc::Rc::new(std::cell::Cell::new(0));
            let reader = Trickle {
                bytes,
                sizes: (1..=most.max(1)).cycle(),
                given: given.clone(),
            };
            (reader, given)
        }
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self
                .sizes
                .next()
                .unwrap_or(1)
                .min(buf.len())
                .min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            self.given.set(self.given.get() + n);
            Ok(n)
        }
    }

    fn read_all<R: Read>(
        mut reader: UploadReader<R>,
    ) -> (Vec<LocatedRecord>, Result<u64, CsvProblems>) {
        let records: Vec<LocatedRecord> = reader.by_ref().collect();
        (records, reader.finish().0)
    }

    #[test]
    fn a_large_file_is_read_incrementally_through_a_small_buffer() {
        const RECORDS: usize = 40_000;
        let row = "9434765919,cpp,2024-01-01,,,020 7364 4079,,duty@example.org\n";
        let mut file = format!("\u{feff}{GOOD_HEADER}");
        for _ in 0..RECORDS {
            file.push_str(row);
        }
        let bytes = file.as_bytes();
        let (trickle, given) = Trickle::new(bytes, 97);
        let mut reader = UploadReader::with_buffer_capacity(trickle, 256);
        let mut seen = 0;
        while let Some(record) = reader.next_record() {
            seen += 1;
            assert_eq!(record.line, seen + 1);
            assert_eq!(record.record.email, "duty@example.org");
            // Never more read than the buffer (and one read) past this record's end.
            let record_end = 3 + GOOD_HEADER.len() + seen as usize * row.len();
            assert!(
                given.get() <= record_end + 256 + 97,
                "record {seen}: {} bytes read, the record ends at {record_end}",
                given.get()
            );
        }
        assert_eq!(seen, RECORDS as u64);
        assert_eq!(reader.finish().0, Ok(RECORDS as u64));
        assert_eq!(given.get(), bytes.len());
    }

    #[test]
    fn problems_beyond_the_first_hundred_are_counted_not_kept() {
        let mut file = GOOD_HEADER.to_owned();
        for _ in 0..5_000 {
            file.push_str("9434765919,cpp\n");
        }
        let problems = UploadReader::new(file.as_bytes()).finish().0.unwrap_err();
        assert_eq!(problems.total, 5_000);
        assert_eq!(problems.first.len(), MAX_PROBLEMS_KEPT);
        assert_eq!(
            lines_of(&problems.first),
            (2..2 + MAX_PROBLEMS_KEPT as u64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_record_past_the_maximum_length_stops_the_reading() {
        // A quote never closed, then megabytes: read no further than the bound, say where.
        let mut file = format!("{GOOD_HEADER}9434765919,cpp,2024-01-01,,,1,,\n9434765919,\"");
        file.push_str(&"x,\n".repeat(1_000_000));
        let (trickle, given) = Trickle::new(file.as_bytes(), 4096);
        let problems = UploadReader::new(trickle).finish().0.unwrap_err();
        assert_eq!(lines_of(&problems.first), [3]);
        assert!(
            problems.first[0]
                .message
                .contains("longer than 65536 bytes"),
            "{problems:?}"
        );
        assert!(
            given.get() < 2 * MAX_RECORD_BYTES,
            "{} bytes read",
            given.get()
        );
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
        fn how_the_file_is_read_in_pieces_changes_nothing(
            text in "[a-z0-9,\"\r\n ]{0,400}",
            most in 1..64usize,
            buffer in 1..64usize,
        ) {
            let file = format!("{GOOD_HEADER}{text}");
            let whole = UploadReader::new(file.as_bytes());
            let (trickle, _) = Trickle::new(file.as_bytes(), most);
            let pieces = UploadReader::with_buffer_capacity(trickle, buffer);
            prop_assert_eq!(read_all(whole), read_all(pieces));
        }

        #[test]
        fn round_trips_the_records_it_writes(records in proptest::collection::vec(record(), 1..20)) {
            let bytes = write_upload_csv(&records).unwrap();
            prop_assert_eq!(parse_upload_csv(&bytes), Ok(records));
        }
    }
}
