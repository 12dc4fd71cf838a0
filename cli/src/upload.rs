//! `cpis upload`: a local authority's flag file, checked whole before anything is sent, then
//! streamed in batches; the server's verdict on every record is printed (and optionally
//! written as a report). The file is read twice and never held: the first pass checks it and
//! keeps each record's line number, the second sends the records as it reads them.

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use crate::upload_csv::{LocatedRecord, MAX_RECORDS, UploadReader};
use anyhow::Context;
use clap::Args;
use cpis_proto::gateway as pb;
use cpis_proto::gateway::local_authority_client::LocalAuthorityClient;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use platform::domain::Activity;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio_stream::{Stream, StreamExt};

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The CSV file: header
    /// nhs_number,flag_type,start_date,end_date,due_date,emergency_phone,office_hours_phone,email
    pub file: PathBuf,
    /// The upload's id; by default the SHA-256 of the file, so sending the same file twice is
    /// one upload.
    #[arg(long)]
    pub upload_id: Option<String>,
    /// Records per message (the server takes at most 5,000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub batch_size: u32,
    /// Write every record's result to this CSV file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the server's report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// The default upload id: the hex SHA-256 of the file's bytes.
pub fn content_id(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

fn hex(digest: aws_lc_rs::digest::Digest) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// How much of the file is read at a time.
const READ_BUFFER: usize = 64 * 1024;

/// Batches read ahead of the ones tonic is sending: with the one being filled and the one being
/// encoded, what the command holds of the file is a few batches, whatever the file's size.
const BATCHES_AHEAD: usize = 2;

pub async fn run(args: UploadArgs) -> CliResult {
    // Pass 1 checks the whole file before anything is sent, keeping only each record's line.
    let checked = check(&args.file)?;
    let gateway = Gateway::connect(&args.gateway)?;
    let upload_id = args
        .upload_id
        .clone()
        .unwrap_or_else(|| checked.content_id.clone());
    // Pass 2 reads it again, sending each batch as it is read.
    let answer = send_file(
        &gateway,
        &upload_id,
        &args.file,
        &checked,
        args.batch_size as usize,
        true,
    )
    .await?;
    let lines = &checked.lines;

    if let Some(path) = &args.report {
        write_report(path, &answer, lines)?;
    }
    if args.json {
        json::print(&json::upload(&answer, lines));
    } else {
        print_report(&answer, lines);
    }
    match pb::UploadStatus::try_from(answer.status) {
        Ok(pb::UploadStatus::Success) => Ok(()),
        _ => Err(Failure::Reported(format!(
            "{} of {} records were rejected",
            answer.rejected,
            answer.accepted + answer.rejected
        ))),
    }
}

/// What the first pass learned of a well-formed file: enough to send it and to point the
/// server's verdicts back at lines, never the records themselves.
#[derive(Debug, PartialEq)]
struct CheckedFile {
    /// The SHA-256 of the file's bytes: the default upload id, and how the second pass knows
    /// it read the same file.
    content_id: String,
    records: u64,
    /// The line each record starts on, by its index in the upload.
    lines: Vec<u64>,
}

/// A file's bytes on their way to the parser, hashed as they pass; a read error is kept, so
/// that it is reported as the file being unreadable rather than as a malformed line.
struct Hashed<R> {
    inner: R,
    context: aws_lc_rs::digest::Context,
    error: Option<String>,
}

impl<R: Read> Hashed<R> {
    fn new(inner: R) -> Self {
        Hashed {
            inner,
            context: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            error: None,
        }
    }

    fn content_id(self) -> String {
        hex(self.context.finish())
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.context.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    self.error.get_or_insert_with(|| e.to_string());
                }
                Err(e)
            }
        }
    }
}

fn open(path: &Path) -> CliResult<UploadReader<Hashed<File>>> {
    let file = File::open(path).map_err(|e| unreadable(path, &e.to_string()))?;
    Ok(UploadReader::with_buffer_capacity(
        Hashed::new(file),
        READ_BUFFER,
    ))
}

fn unreadable(path: &Path, error: &str) -> Failure {
    Failure::usage(format!("reading {}: {error}", path.display()))
}

/// Pass 1: every line checked, every problem reported, nothing kept but line numbers.
fn check(path: &Path) -> CliResult<CheckedFile> {
    let mut reader = open(path)?;
    let mut lines = Vec::new();
    for record in reader.by_ref() {
        // Past the maximum the file is refused anyway: what would be kept is bounded too.
        if lines.len() < MAX_RECORDS {
            lines.push(record.line);
        }
    }
    let (outcome, hashed) = reader.finish();
    if let Some(error) = &hashed.error {
        return Err(unreadable(path, error));
    }
    let records = outcome.map_err(Failure::Csv)?;
    Ok(CheckedFile {
        content_id: hashed.content_id(),
        records,
        lines,
    })
}

/// What pass 2 hands the request stream.
enum Piece {
    Batch(pb::UploadFlagsRequest),
    /// Every record was sent and the file was the one checked: the stream may end cleanly.
    End,
}

/// Pass 2, on a blocking thread: reads the file again and sends its records in batches of
/// `batch_size`. The end of the upload is sent only once the whole file was read and found
/// the same as in pass 1 (the hash and number of records it found), since a clean end is
/// what makes an upload take effect.
/// The most one message's records may take encoded: half the gateway's 2 MiB limit for an
/// UploadFlags message, which leaves room for the upload id and the framing.
const BATCH_BYTES: usize = 1024 * 1024;

/// A record's bytes within its message: the record, its length prefix and its field tag.
fn record_bytes(record: &pb::FlagRecord) -> usize {
    let len = prost::Message::encoded_len(record);
    len + prost::encoding::encoded_len_varint(len as u64) + 1
}

fn read_batches(
    path: &Path,
    upload_id: &str,
    (content_id, records): (&str, u64),
    batch_size: usize,
    to_send: &tokio::sync::mpsc::Sender<Piece>,
) -> CliResult<()> {
    let batch_size = batch_size.max(1);
    let message = |records| {
        Piece::Batch(pb::UploadFlagsRequest {
            upload_id: upload_id.to_owned(),
            records,
        })
    };
    let mut reader = open(path)?;
    let mut batch = Vec::with_capacity(batch_size);
    let mut bytes = 0;
    for located in reader.by_ref() {
        let size = record_bytes(&located.record);
        // A batch also ends before it would outgrow BATCH_BYTES, so a file of over-long
        // fields goes in more messages and is judged record by record, never refused whole.
        let full = (!batch.is_empty() && bytes + size > BATCH_BYTES)
            .then(|| std::mem::replace(&mut batch, Vec::with_capacity(batch_size)));
        if let Some(full) = full {
            bytes = 0;
            if to_send.blocking_send(message(full)).is_err() {
                // The call is over (the server answered early): its answer says why.
                return Ok(());
            }
        }
        bytes += size;
        batch.push(located.record);
        if batch.len() == batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            bytes = 0;
            if to_send.blocking_send(message(full)).is_err() {
                return Ok(());
            }
        }
    }
    let (outcome, hashed) = reader.finish();
    let same = hashed.error.is_none()
        && outcome.ok() == Some(records)
        && hashed.content_id() == content_id;
    if !same {
        return Err(Failure::Other(anyhow::anyhow!(
            "{} changed while it was being sent; the upload was cancelled: run it again",
            path.display()
        )));
    }
    if !batch.is_empty() && to_send.blocking_send(message(batch)).is_err() {
        return Ok(());
    }
    let _ = to_send.blocking_send(Piece::End);
    Ok(())
}

/// Streams the file checked by pass 1 as it reads it again.
async fn send_file(
    gateway: &Gateway,
    upload_id: &str,
    path: &Path,
    checked: &CheckedFile,
    batch_size: usize,
    progress: bool,
) -> CliResult<pb::UploadFlagsResponse> {
    let (to_send, pieces) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
    let reading = {
        let (path, upload_id) = (path.to_owned(), upload_id.to_owned());
        let (content_id, records) = (checked.content_id.clone(), checked.records);
        tokio::task::spawn_blocking(move || {
            let expected = (content_id.as_str(), records);
            read_batches(&path, &upload_id, expected, batch_size, &to_send)
        })
    };
    let messages = futures::stream::unfold(pieces, |mut pieces| async move {
        match pieces.recv().await {
            Some(Piece::Batch(batch)) => Some((batch, pieces)),
            Some(Piece::End) => None,
            // The reader failed: the stream must never end cleanly (that would apply what was
            // sent so far); the call is cancelled below instead.
            None => std::future::pending().await,
        }
    });
    let upload = upload_stream(gateway, messages, checked.records, progress);
    tokio::pin!(upload, reading);
    tokio::select! {
        answer = &mut upload => answer,
        read = &mut reading => match read {
            Ok(Ok(())) => upload.await,
            // Returning drops the call: cancelled, not ended, so nothing of it is applied.
            Ok(Err(failure)) => Err(failure),
            Err(e) => Err(Failure::Other(anyhow::anyhow!(
                "reading {}: {e}",
                path.display()
            ))),
        },
    }
}

/// Streams the records in batches of `batch_size` under one upload id, with a progress bar
/// on a terminal. Used by `cpis demo-data --load`, whose records are in memory already.
pub async fn send(
    gateway: &Gateway,
    upload_id: &str,
    records: Vec<LocatedRecord>,
    batch_size: usize,
    progress: bool,
) -> CliResult<pb::UploadFlagsResponse> {
    let total = records.len() as u64;
    let upload_id = upload_id.to_owned();
    let batch_size = batch_size.max(1);
    let mut records = records.into_iter().map(|r| r.record);
    let batches = std::iter::from_fn(move || {
        let batch: Vec<pb::FlagRecord> = records.by_ref().take(batch_size).collect();
        (!batch.is_empty()).then(|| pb::UploadFlagsRequest {
            upload_id: upload_id.clone(),
            records: batch,
        })
    });
    upload_stream(gateway, tokio_stream::iter(batches), total, progress).await
}

/// One UploadFlags call sending `messages` (`total` records in all).
async fn upload_stream(
    gateway: &Gateway,
    messages: impl Stream<Item = pb::UploadFlagsRequest> + Send + 'static,
    total: u64,
    progress: bool,
) -> CliResult<pb::UploadFlagsResponse> {
    let bar = if progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} records  {per_sec}  time left {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let counter = bar.clone();
    let stream = messages.map(move |batch| {
        // Counted as tonic pulls each message to send it.
        counter.inc(batch.records.len() as u64);
        if counter.position() >= total {
            counter.set_message("applying...");
        }
        batch
    });
    let answer = LocalAuthorityClient::new(gateway.channel.clone())
        .upload_flags(gateway.streaming(stream)?)
        .await
        .map_err(Failure::needing(Activity::LaManage));
    bar.finish_and_clear();
    Ok(answer?.into_inner())
}

fn code_name(code: i32) -> &'static str {
    pb::RecordCode::try_from(code).map_or("RECORD_CODE_UNKNOWN", |c| c.as_str_name())
}

fn print_report(answer: &pb::UploadFlagsResponse, lines: &[u64]) {
    let status = pb::UploadStatus::try_from(answer.status)
        .map_or("UPLOAD_STATUS_UNKNOWN", |s| s.as_str_name());
    println!(
        "upload {}: {status}: {} accepted, {} rejected",
        answer.upload_id, answer.accepted, answer.rejected
    );
    for r in answer
        .results
        .iter()
        .filter(|r| r.code != pb::RecordCode::Accepted as i32)
    {
        let line = lines
            .get(r.index as usize)
            .map_or_else(|| "?".to_owned(), u64::to_string);
        println!(
            "  line {line}: {}  {}  {}",
            r.nhs_number,
            code_name(r.code),
            r.message
        );
    }
}

fn write_report(
    path: &PathBuf,
    answer: &pb::UploadFlagsResponse,
    lines: &[u64],
) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_path(path)
        .with_context(|| format!("creating the report {}", path.display()))?;
    writer.write_record(["line", "index", "nhs_number", "code", "message"])?;
    for r in &answer.results {
        let line = lines
            .get(r.index as usize)
            .map_or_else(String::new, u64::to_string);
        writer.write_record([
            line.as_str(),
            &r.index.to_string(),
            &r.nhs_number,
            code_name(r.code),
            &r.message,
        ])?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload_csv;

    #[test]
    fn the_default_upload_id_is_the_hex_sha256_of_the_file() {
        assert_eq!(
            content_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn upload_file(dir: &Path, rows: usize) -> PathBuf {
        let mut file = upload_csv::HEADER.join(",") + "\n";
        for i in 0..rows {
            file.push_str(&format!("9434765919,cpp,2024-01-{:02},,,1,,\n", 1 + i % 28));
        }
        let path = dir.join("flags.csv");
        std::fs::write(&path, file).unwrap();
        path
    }

    /// Pass 2 run to its end on `path`: the pieces it sent, and how it ended.
    fn second_pass(path: &Path, checked: &CheckedFile) -> (Vec<Piece>, CliResult<()>) {
        let (to_send, mut sent) = tokio::sync::mpsc::channel(1000);
        let expected = (checked.content_id.as_str(), checked.records);
        let result = read_batches(path, "id", expected, 2, &to_send);
        drop(to_send);
        let mut pieces = Vec::new();
        while let Ok(piece) = sent.try_recv() {
            pieces.push(piece);
        }
        (pieces, result)
    }

    #[test]
    fn the_first_pass_keeps_line_numbers_and_the_files_hash_not_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = upload_file(dir.path(), 5);
        let checked = check(&path).unwrap();
        assert_eq!(checked.records, 5);
        assert_eq!(checked.lines, [2, 3, 4, 5, 6]);
        assert_eq!(
            checked.content_id,
            content_id(&std::fs::read(&path).unwrap())
        );

        // The second pass sends batches of 2 and then, only then, the end.
        let (pieces, result) = second_pass(&path, &checked);
        assert!(result.is_ok());
        let sizes: Vec<Option<usize>> = pieces
            .iter()
            .map(|p| match p {
                Piece::Batch(b) => Some(b.records.len()),
                Piece::End => None,
            })
            .collect();
        assert_eq!(sizes, [Some(2), Some(2), Some(1), None]);
    }

    #[test]
    fn batches_of_long_records_end_at_batch_bytes_whatever_their_count() {
        let dir = tempfile::tempdir().unwrap();
        // 60 records of about 60 KiB each (a field far over its maximum, refused by the
        // server record by record): 3.6 MB in all, more than one 2 MiB message could carry.
        let long = "x".repeat(60 * 1024);
        let mut file = upload_csv::HEADER.join(",") + "\n";
        for _ in 0..60 {
            file.push_str(&format!("9434765919,cpp,2024-01-01,,,1,,{long}\n"));
        }
        let path = dir.path().join("long.csv");
        std::fs::write(&path, file).unwrap();
        let checked = check(&path).unwrap();
        let (to_send, mut sent) = tokio::sync::mpsc::channel(1000);
        let expected = (checked.content_id.as_str(), checked.records);
        read_batches(&path, "id", expected, 1000, &to_send).unwrap();
        drop(to_send);
        let mut batches = Vec::new();
        while let Ok(piece) = sent.try_recv() {
            if let Piece::Batch(b) = piece {
                batches.push(b);
            }
        }
        assert!(batches.len() >= 4, "{} batches", batches.len());
        assert_eq!(batches.iter().map(|b| b.records.len()).sum::<usize>(), 60);
        for batch in &batches {
            assert!(prost::Message::encoded_len(batch) <= BATCH_BYTES + 1024);
            assert!(prost::Message::encoded_len(batch) < 2 * 1024 * 1024);
        }
    }

    #[test]
    fn a_file_changed_between_the_passes_is_never_ended_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = upload_file(dir.path(), 5);
        let checked = check(&path).unwrap();
        // Same number of records, different content.
        std::fs::write(
            &path,
            std::fs::read_to_string(&path)
                .unwrap()
                .replace("2024-01-01", "2024-02-01"),
        )
        .unwrap();
        let (pieces, result) = second_pass(&path, &checked);
        let failure = result.unwrap_err();
        assert!(failure.render().contains("changed while it was being sent"));
        assert!(!pieces.iter().any(|p| matches!(p, Piece::End)));
    }

    #[test]
    fn a_malformed_file_is_refused_with_every_problem_and_an_unreadable_one_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "nhs\n1,2\n").unwrap();
        match check(&path) {
            Err(Failure::Csv(problems)) => assert_eq!(problems.total, 2, "header and columns"),
            other => panic!("{other:?}"),
        }
        // A directory opens but cannot be read: said as unreadable, as before streaming.
        match check(dir.path()) {
            Err(Failure::Usage(message)) => assert!(message.starts_with("reading "), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
