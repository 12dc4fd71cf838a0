//! `cpis notifications list|watch|ack`: what a local authority is told about its flags.
//! `watch` keeps its place in a cursor file, so a restarted watcher resumes where it stopped
//! (delivery is at-least-once: a cursor already seen is skipped).

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use crate::lookup::{flag_type_in_words, local_time, setting_type_in_words};
use crate::pages::{self, PageArgs};
use anyhow::Context;
use clap::{Args, Subcommand};
use cpis_proto::gateway as pb;
use cpis_proto::gateway::local_authority_client::LocalAuthorityClient;
use platform::domain::Activity;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

#[derive(Args, Debug)]
pub struct NotificationsArgs {
    #[command(subcommand)]
    pub command: NotificationsCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct StartArgs {
    /// Only notifications after this cursor (default: after your acknowledged cursor).
    #[arg(long, default_value_t = 0, conflicts_with = "from_start")]
    pub after_cursor: u64,
    /// From the oldest notification retained, acknowledged ones included.
    #[arg(long)]
    pub from_start: bool,
}

#[derive(Subcommand, Debug)]
pub enum NotificationsCommand {
    /// List notifications without acknowledging them.
    List {
        #[command(flatten)]
        start: StartArgs,
        #[command(flatten)]
        pages: PageArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print notifications as they arrive, until interrupted; reconnects when the gateway is
    /// unavailable.
    Watch {
        #[command(flatten)]
        start: StartArgs,
        /// Resume after the cursor stored in this file, and store each notification's cursor
        /// in it once printed.
        #[arg(long)]
        cursor_file: Option<PathBuf>,
        /// Stop after this many notifications.
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge every notification up to and including a cursor.
    Ack {
        /// The cursor (default: the one stored in --cursor-file).
        cursor: Option<u64>,
        #[arg(long)]
        cursor_file: Option<PathBuf>,
    },
}

pub async fn run(args: NotificationsArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    match args.command {
        NotificationsCommand::List { start, pages, json } => {
            list(&gateway, start, &pages, json).await
        }
        NotificationsCommand::Watch {
            start,
            cursor_file,
            count,
            json,
        } => watch(&gateway, start, cursor_file.as_deref(), count, json).await,
        NotificationsCommand::Ack {
            cursor,
            cursor_file,
        } => {
            let cursor = match (cursor, &cursor_file) {
                (Some(c), _) => c,
                (None, Some(file)) => read_cursor(file)?.ok_or_else(|| {
                    Failure::usage(format!("{} holds no cursor yet", file.display()))
                })?,
                (None, None) => {
                    return Err(Failure::usage("give a cursor, or --cursor-file"));
                }
            };
            let answer = LocalAuthorityClient::new(gateway.channel.clone())
                .acknowledge_notifications(gateway.request(
                    pb::AcknowledgeNotificationsRequest {
                        up_to_cursor: cursor,
                    },
                )?)
                .await
                .map_err(Failure::needing(Activity::LaManage))?
                .into_inner();
            println!(
                "acknowledged up to cursor {}; {} still to process",
                answer.acknowledged_cursor, answer.backlog
            );
            Ok(())
        }
    }
}

async fn list(gateway: &Gateway, start: StartArgs, pages: &PageArgs, as_json: bool) -> CliResult {
    let mut client = LocalAuthorityClient::new(gateway.channel.clone());
    let (notifications, more) = pages::collect(pages, async |page_token| {
        let request = pb::ListNotificationsRequest {
            after_cursor: start.after_cursor,
            from_start: start.from_start,
            page_size: pages.page_size,
            page_token,
        };
        let page = client
            .list_notifications(gateway.request(request)?)
            .await
            .map_err(Failure::needing(Activity::LaManage))?
            .into_inner();
        Ok((page.notifications, page.next_page_token))
    })
    .await?;
    if as_json {
        json::print(&notifications.iter().map(json::notification).collect());
    } else {
        for n in &notifications {
            println!("{}", line(n));
        }
    }
    pages::note_more(more);
    Ok(())
}

/// One notification as a line a duty worker reads.
pub fn line(n: &pb::Notification) -> String {
    let what = flag_type_in_words(n.flag_type);
    match pb::NotificationKind::try_from(n.kind) {
        Ok(pb::NotificationKind::Access) => format!(
            "#{} {}  {} ({what}) was looked up at {} ({}, {}) by {} (role {}), lookup {}",
            n.cursor,
            local_time(n.accessed_at.as_ref()),
            n.nhs_number,
            n.organisation_name,
            n.ods_code,
            setting_type_in_words(n.setting_type),
            n.user_id,
            n.role_code,
            n.lookup_id
        ),
        Ok(pb::NotificationKind::NhsNumberInactive) => format!(
            "#{} {}  {} ({what}) is no longer in use{}: re-upload the flag under the new number",
            n.cursor,
            local_time(n.accessed_at.as_ref()),
            n.nhs_number,
            if n.superseded_by.is_empty() {
                String::new()
            } else {
                format!(", replaced by {}", n.superseded_by)
            }
        ),
        Ok(pb::NotificationKind::Restricted) => format!(
            "#{} {}  {} ({what}) is now a restricted record: new uploads for it are refused",
            n.cursor,
            local_time(n.accessed_at.as_ref()),
            n.nhs_number
        ),
        _ => format!("#{} (unknown kind {})", n.cursor, n.kind),
    }
}

pub fn read_cursor(path: &Path) -> CliResult<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            Failure::usage(format!(
                "{} does not hold a cursor (a number): {:?}",
                path.display(),
                text.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::usage(format!("reading {}: {e}", path.display()))),
    }
}

/// Written beside the file then renamed over it, so a crash leaves the old cursor or the new
/// one, never half of one.
pub fn write_cursor(path: &Path, cursor: u64) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cursor".into());
    let temp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temp, format!("{cursor}\n"))
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

async fn watch(
    gateway: &Gateway,
    start: StartArgs,
    cursor_file: Option<&Path>,
    count: Option<u64>,
    as_json: bool,
) -> CliResult {
    let stored = match cursor_file {
        Some(file) => read_cursor(file)?,
        None => None,
    };
    let mut last = stored.unwrap_or(start.after_cursor);
    // A stored cursor wins: the watcher resumes exactly after what it last printed.
    let mut from_start = start.from_start && stored.is_none();
    let mut printed = 0u64;
    let mut backoff = FIRST_BACKOFF;
    let mut client = LocalAuthorityClient::new(gateway.channel.clone());
    loop {
        let request = pb::WatchNotificationsRequest {
            after_cursor: if from_start { 0 } else { last },
            from_start,
        };
        let outcome = match client
            .watch_notifications(gateway.streaming(request)?)
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(n)) => {
                            backoff = FIRST_BACKOFF;
                            if n.cursor <= last {
                                continue;
                            }
                            from_start = false;
                            last = n.cursor;
                            if as_json {
                                println!("{}", json::notification(&n));
                            } else {
                                println!("{}", line(&n));
                            }
                            if let Some(file) = cursor_file {
                                write_cursor(file, n.cursor)?;
                            }
                            printed += 1;
                            if count.is_some_and(|c| printed >= c) {
                                return Ok(());
                            }
                        }
                        Ok(None) => break Err(tonic::Status::unavailable("the stream ended")),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        };
        match outcome {
            Err(status) if status.code() == Code::Unavailable => {
                eprintln!(
                    "cpis: the gateway is unavailable ({}); reconnecting in {:.1}s",
                    status.message(),
                    backoff.as_secs_f64()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(status) => return Err(Failure::needing(Activity::LaManage)(status)),
            Ok(()) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cursor");
        assert_eq!(read_cursor(&file).unwrap(), None);
        write_cursor(&file, 41).unwrap();
        write_cursor(&file, 42).unwrap();
        assert_eq!(read_cursor(&file).unwrap(), Some(42));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::write(&file, "garbage").unwrap();
        assert!(read_cursor(&file).is_err());
    }
}
