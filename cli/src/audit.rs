//! `cpis audit list|verify|checkpoint`: the hash-chained audit log, for privacy officers. A
//! checkpoint is kept as a JSON file outside CP-IS and later proves the log up to it intact.

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use crate::lookup::local_time;
use crate::pages::{self, PageArgs};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use cpis_proto::gateway as pb;
use cpis_proto::gateway::audit_client::AuditClient;
use platform::domain::Activity;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List audit events (oldest first) matching every filter given.
    List {
        #[arg(long)]
        nhs_number: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// The caller's organisation's ODS code.
        #[arg(long)]
        ods: Option<String>,
        /// Recorded at or after this instant (RFC 3339, or a date YYYY-MM-DD for its start in
        /// UTC).
        #[arg(long, value_parser = parse_instant)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Recorded before this instant (same forms).
        #[arg(long, value_parser = parse_instant)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        pages: PageArgs,
        #[arg(long)]
        json: bool,
    },
    /// Get a signed checkpoint of the log's head: print it as JSON, and keep it.
    Checkpoint {
        /// Also write it to this file (for `cpis audit verify --checkpoint`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Recompute the hash chain (exit status 4 when it does not verify).
    Verify {
        /// A checkpoint file from `cpis audit checkpoint`: also prove nothing up to it was
        /// truncated.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// The checkpoint as kept on disk: the proto's fields, bytes in base64.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    pub sequence: u64,
    pub hash: String,
    pub signature: String,
    pub key_id: String,
}

impl CheckpointFile {
    pub fn from_proto(c: &pb::Checkpoint) -> Self {
        CheckpointFile {
            sequence: c.sequence,
            hash: STANDARD.encode(&c.hash),
            signature: STANDARD.encode(&c.signature),
            key_id: c.key_id.clone(),
        }
    }

    pub fn to_proto(&self) -> anyhow::Result<pb::Checkpoint> {
        Ok(pb::Checkpoint {
            sequence: self.sequence,
            hash: STANDARD.decode(&self.hash).context("hash is not base64")?,
            signature: STANDARD
                .decode(&self.signature)
                .context("signature is not base64")?,
            key_id: self.key_id.clone(),
        })
    }
}

pub fn parse_instant(input: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(input) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    platform::domain::parse_date(input)
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| "expected an RFC 3339 instant or a date YYYY-MM-DD".to_owned())
}

pub async fn run(args: AuditArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut client = AuditClient::new(gateway.channel.clone());
    let refused = Failure::needing(Activity::Audit);
    match args.command {
        AuditCommand::List {
            nhs_number,
            user,
            ods,
            since,
            until,
            pages,
            json,
        } => {
            let (events, more) = pages::collect(&pages, async |page_token| {
                let request = pb::ListAuditEventsRequest {
                    nhs_number: nhs_number.clone().unwrap_or_default(),
                    user_id: user.clone().unwrap_or_default(),
                    ods_code: ods.clone().unwrap_or_default(),
                    start_time: since.map(platform::domain::to_timestamp),
                    end_time: until.map(platform::domain::to_timestamp),
                    page_size: pages.page_size,
                    page_token,
                };
                let page = client
                    .list_audit_events(gateway.request(request)?)
                    .await
                    .map_err(&refused)?
                    .into_inner();
                Ok((page.events, page.next_page_token))
            })
            .await?;
            if json {
                json::print(&events.iter().map(json::audit_event).collect());
            } else {
                for e in &events {
                    println!("{}", event_line(e));
                }
            }
            pages::note_more(more);
            Ok(())
        }
        AuditCommand::Checkpoint { out } => {
            let checkpoint = client
                .get_checkpoint(gateway.request(())?)
                .await
                .map_err(&refused)?
                .into_inner();
            let text = serde_json::to_string_pretty(&CheckpointFile::from_proto(&checkpoint))
                .context("encoding the checkpoint")?;
            if let Some(path) = out {
                std::fs::write(&path, format!("{text}\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{text}");
            Ok(())
        }
        AuditCommand::Verify { checkpoint, json } => {
            let checkpoint = match checkpoint {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| Failure::usage(format!("reading {}: {e}", path.display())))?;
                    let file: CheckpointFile = serde_json::from_str(&text).map_err(|e| {
                        Failure::usage(format!(
                            "{} is not a checkpoint from `cpis audit checkpoint`: {e}",
                            path.display()
                        ))
                    })?;
                    Some(
                        file.to_proto()
                            .map_err(|e| Failure::usage(format!("{}: {e:#}", path.display())))?,
                    )
                }
            };
            let answer = client
                .verify_audit_log(gateway.request(pb::VerifyAuditLogRequest { checkpoint })?)
                .await
                .map_err(&refused)?
                .into_inner();
            if json {
                json::print(&serde_json::json!({
                    "ok": answer.ok,
                    "records_checked": answer.records_checked,
                    "first_bad_sequence": answer.first_bad_sequence,
                    "problem": answer.problem,
                }));
            } else if answer.ok {
                println!(
                    "the audit log verifies: {} records checked, intact",
                    answer.records_checked
                );
            } else {
                println!(
                    "the audit log does NOT verify: first bad sequence {} ({}); {} records checked",
                    answer.first_bad_sequence, answer.problem, answer.records_checked
                );
            }
            if answer.ok {
                Ok(())
            } else {
                Err(Failure::Reported("the audit log does not verify".into()))
            }
        }
    }
}

fn event_line(e: &pb::AuditEvent) -> String {
    let outcome = match (pb::AuditOutcome::try_from(e.outcome), &e.delivery) {
        (Ok(pb::AuditOutcome::Allowed), _) => "allowed".to_owned(),
        (Ok(pb::AuditOutcome::Delivered), Some(d)) => format!(
            "delivered {} notification(s), cursors {}..{}",
            d.count, d.first_cursor, d.last_cursor
        ),
        _ => format!("DENIED {}", e.reason),
    };
    let mut line = format!(
        "{:>6} {}  {} {} by {} ({}, role {})",
        e.sequence,
        local_time(e.recorded_at.as_ref()),
        e.action,
        outcome,
        e.user_id,
        e.ods_code,
        e.role_code
    );
    if !e.nhs_number.is_empty() {
        line.push_str(&format!("  nhs {}", e.nhs_number));
    }
    if !e.site_ods_code.is_empty() {
        line.push_str(&format!("  at {}", e.site_ods_code));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_file_round_trips_to_the_proto() {
        let c = pb::Checkpoint {
            sequence: 7,
            hash: vec![1; 32],
            signature: vec![2; 64],
            key_id: "k1".into(),
        };
        let text = serde_json::to_string(&CheckpointFile::from_proto(&c)).unwrap();
        let back: CheckpointFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_proto().unwrap(), c);
    }

    #[test]
    fn instants_are_rfc3339_or_dates() {
        assert_eq!(
            parse_instant("2026-01-02").unwrap().to_rfc3339(),
            "2026-01-02T00:00:00+00:00"
        );
        assert!(parse_instant("2026-01-02T10:00:00+01:00").is_ok());
        assert!(parse_instant("yesterday").is_err());
    }
}
