//! `cpis flags list|end|delete`: a local authority's own flags.

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use crate::lookup::{flag_type_in_words, spaced_nhs_number};
use crate::pages::{self, PageArgs};
use clap::{Args, Subcommand};
use cpis_proto::gateway as pb;
use cpis_proto::gateway::local_authority_client::LocalAuthorityClient;
use platform::domain::{Activity, FlagType};

#[derive(Args, Debug)]
pub struct FlagsArgs {
    #[command(subcommand)]
    pub command: FlagsCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum FlagsCommand {
    /// List the flags your local authority holds (ended ones included).
    List {
        #[command(flatten)]
        pages: PageArgs,
        #[arg(long)]
        json: bool,
    },
    /// Set the end date of one of your flags.
    End {
        nhs_number: String,
        /// cpp, lac or ucpp.
        #[arg(long = "type", value_parser = parse_flag_type)]
        flag_type: FlagType,
        /// The flag's start date (YYYY-MM-DD): with the type, it names the flag.
        #[arg(long)]
        start: String,
        /// The end date to set (YYYY-MM-DD).
        #[arg(long)]
        end: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete one of your flags uploaded in error.
    Delete {
        nhs_number: String,
        #[arg(long = "type", value_parser = parse_flag_type)]
        flag_type: FlagType,
        #[arg(long)]
        start: String,
    },
}

pub fn parse_flag_type(input: &str) -> Result<FlagType, String> {
    FlagType::parse(input).ok_or_else(|| "unknown flag type; one of: cpp, lac, ucpp".to_owned())
}

pub async fn run(args: FlagsArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut client = LocalAuthorityClient::new(gateway.channel.clone());
    let refused = Failure::needing(Activity::LaManage);
    match args.command {
        FlagsCommand::List { pages, json } => {
            let (flags, more) = pages::collect(&pages, async |page_token| {
                let request = pb::ListFlagsRequest {
                    page_size: pages.page_size,
                    page_token,
                };
                let page = client
                    .list_flags(gateway.request(request)?)
                    .await
                    .map_err(&refused)?
                    .into_inner();
                Ok((page.flags, page.next_page_token))
            })
            .await?;
            if json {
                json::print(&flags.iter().map(json::flag).collect());
            } else {
                for f in &flags {
                    println!("{}", flag_line(f));
                }
            }
            pages::note_more(more);
        }
        FlagsCommand::End {
            nhs_number,
            flag_type,
            start,
            end,
            json,
        } => {
            let request = pb::EndFlagRequest {
                nhs_number,
                flag_type: flag_type.into(),
                start_date: start,
                end_date: end,
            };
            let flag = client
                .end_flag(gateway.request(request)?)
                .await
                .map_err(&refused)?
                .into_inner();
            if json {
                json::print(&json::flag(&flag));
            } else {
                println!("ended: {}", flag_line(&flag));
            }
        }
        FlagsCommand::Delete {
            nhs_number,
            flag_type,
            start,
        } => {
            let request = pb::DeleteFlagRequest {
                nhs_number: nhs_number.clone(),
                flag_type: flag_type.into(),
                start_date: start.clone(),
            };
            client
                .delete_flag(gateway.request(request)?)
                .await
                .map_err(&refused)?;
            println!(
                "deleted the {} flag on {} starting {start}",
                flag_type.as_str(),
                spaced_nhs_number(&nhs_number)
            );
        }
    }
    Ok(())
}

fn flag_line(f: &pb::Flag) -> String {
    let mut line = format!(
        "{}  {:<4} {}  started {}",
        f.nhs_number,
        FlagType::from_wire(f.flag_type).map_or("?", FlagType::as_str),
        if f.active { "active" } else { "ended " },
        f.start_date
    );
    if !f.end_date.is_empty() {
        line.push_str(&format!("  ended {}", f.end_date));
    }
    if !f.due_date.is_empty() {
        line.push_str(&format!("  due {}", f.due_date));
    }
    line.push_str(&format!("  ({})", flag_type_in_words(f.flag_type)));
    line
}
