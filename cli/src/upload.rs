//! `cpis upload`: a local authority's flag file, checked whole before anything is sent, then
//! streamed in batches; the server's verdict on every record is printed (and optionally
//! written as a report).

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use crate::upload_csv::{self, LocatedRecord};
use anyhow::Context;
use clap::Args;
use cpis_proto::gateway as pb;
use cpis_proto::gateway::local_authority_client::LocalAuthorityClient;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use platform::domain::Activity;
use std::path::PathBuf;
use tokio_stream::StreamExt;

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
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn run(args: UploadArgs) -> CliResult {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| Failure::usage(format!("reading {}: {e}", args.file.display())))?;
    let records = upload_csv::parse_located(&bytes).map_err(Failure::Csv)?;
    let gateway = Gateway::connect(&args.gateway)?;
    let upload_id = args.upload_id.clone().unwrap_or_else(|| content_id(&bytes));
    let lines: Vec<u64> = records.iter().map(|r| r.line).collect();
    let answer = send(
        &gateway,
        &upload_id,
        records,
        args.batch_size as usize,
        true,
    )
    .await?;

    if let Some(path) = &args.report {
        write_report(path, &answer, &lines)?;
    }
    if args.json {
        json::print(&json::upload(&answer, &lines));
    } else {
        print_report(&answer, &lines);
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

/// Streams the records in batches of `batch_size` under one upload id, with a progress bar
/// on a terminal. Also used by `cpis demo-data --load`.
pub async fn send(
    gateway: &Gateway,
    upload_id: &str,
    records: Vec<LocatedRecord>,
    batch_size: usize,
    progress: bool,
) -> CliResult<pb::UploadFlagsResponse> {
    let total = records.len() as u64;
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
    let mut batches: Vec<pb::UploadFlagsRequest> = Vec::new();
    let mut iter = records.into_iter().map(|r| r.record).peekable();
    while iter.peek().is_some() {
        batches.push(pb::UploadFlagsRequest {
            upload_id: upload_id.to_owned(),
            records: iter.by_ref().take(batch_size.max(1)).collect(),
        });
    }
    let counter = bar.clone();
    let stream = tokio_stream::iter(batches).map(move |batch| {
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

    #[test]
    fn the_default_upload_id_is_the_hex_sha256_of_the_file() {
        assert_eq!(
            content_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
