//! Administration: `cpis org`, `cpis system`, `cpis restrict`, `cpis nhs-number` and
//! `cpis admin obligations` (activity CPIS_ADMIN).

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use crate::pages::{self, PageArgs};
use clap::{Args, Subcommand};
use cpis_proto::gateway as pb;
use cpis_proto::gateway::administration_client::AdministrationClient;
use platform::domain::Activity;
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct OrgArgs {
    #[command(subcommand)]
    pub command: OrgCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an organisation, or replace its name, kind and onboarding.
    Upsert {
        ods_code: String,
        #[arg(long)]
        name: String,
        /// local-authority (or la) or health.
        #[arg(long, value_parser = parse_kind)]
        kind: pb::OrganisationKind,
        /// Register it without onboarding it (or offboard it).
        #[arg(long)]
        not_onboarded: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the organisations.
    List {
        #[command(flatten)]
        pages: PageArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct SystemArgs {
    #[command(subcommand)]
    pub command: SystemCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Register a council system by its client certificate's SAN.
    Register {
        san: String,
        /// The local authority it acts for.
        #[arg(long)]
        ods: String,
        /// Activities granted (only CPIS_LA_MANAGE is accepted).
        #[arg(long = "activity", default_values_t = ["CPIS_LA_MANAGE".to_owned()])]
        activities: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the registered systems.
    List {
        #[command(flatten)]
        pages: PageArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove a registered system: its next call is refused.
    Remove { san: String },
}

#[derive(Args, Debug)]
pub struct RestrictArgs {
    #[command(subcommand)]
    pub command: RestrictCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum RestrictCommand {
    /// Restrict an NHS number (sensitive record): uploads refuse it from now on.
    Set {
        nhs_number: String,
        /// Why (kept for the audit trail, never shown to local authorities).
        #[arg(long)]
        reason: String,
    },
    /// Lift a restriction.
    Clear { nhs_number: String },
}

#[derive(Args, Debug)]
pub struct NhsNumberArgs {
    #[command(subcommand)]
    pub command: NhsNumberCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum NhsNumberCommand {
    /// Mark an NHS number no longer in use; the local authorities holding flags on it are told.
    Inactive {
        nhs_number: String,
        /// The number replacing it, when known.
        #[arg(long)]
        superseded_by: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Obligations the reconciler gave up on (their work kept failing for 24 hours): list,
    /// retry.
    #[command(subcommand)]
    Obligations(ObligationsCommand),
}

#[derive(Subcommand, Debug)]
pub enum ObligationsCommand {
    /// List the failed obligations, oldest first: lookup id, when, organisation, tries and
    /// the last error (never an NHS number or a user).
    List {
        #[command(flatten)]
        pages: PageArgs,
        #[arg(long)]
        json: bool,
    },
    /// Return an obligation to the reconciler, once the cause is fixed: it is carried out
    /// again within seconds.
    Retry { lookup_id: String },
}

pub fn parse_kind(input: &str) -> Result<pb::OrganisationKind, String> {
    let normal = input.trim().replace('-', "_").to_ascii_uppercase();
    let suffix = normal.strip_prefix("ORGANISATION_KIND_").unwrap_or(&normal);
    match suffix {
        "LOCAL_AUTHORITY" | "LA" => Ok(pb::OrganisationKind::LocalAuthority),
        "HEALTH" => Ok(pb::OrganisationKind::Health),
        _ => Err("unknown kind; one of: local-authority (la), health".into()),
    }
}

fn client(gateway: &Gateway) -> AdministrationClient<Channel> {
    AdministrationClient::new(gateway.channel.clone())
}

fn refused(status: tonic::Status) -> Failure {
    Failure::needing(Activity::Admin)(status)
}

fn kind_name(kind: i32) -> &'static str {
    match pb::OrganisationKind::try_from(kind) {
        Ok(pb::OrganisationKind::LocalAuthority) => "local authority",
        Ok(pb::OrganisationKind::Health) => "health",
        _ => "unknown",
    }
}

fn org_line(o: &pb::Organisation) -> String {
    format!(
        "{:<8} {:<16} {:<14} {}",
        o.ods_code,
        kind_name(o.kind),
        if o.onboarded {
            "onboarded"
        } else {
            "not onboarded"
        },
        o.name
    )
}

pub async fn org(args: OrgArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut admin = client(&gateway);
    match args.command {
        OrgCommand::Upsert {
            ods_code,
            name,
            kind,
            not_onboarded,
            json,
        } => {
            let request = pb::UpsertOrganisationRequest {
                ods_code,
                name,
                kind: kind.into(),
                onboarded: !not_onboarded,
            };
            let o = admin
                .upsert_organisation(gateway.request(request)?)
                .await
                .map_err(refused)?
                .into_inner();
            if json {
                json::print(&json::organisation(&o));
            } else {
                println!("{}", org_line(&o));
            }
        }
        OrgCommand::List { pages, json } => {
            let (orgs, more) = pages::collect(&pages, async |page_token| {
                let request = pb::ListOrganisationsRequest {
                    page_size: pages.page_size,
                    page_token,
                };
                let page = admin
                    .list_organisations(gateway.request(request)?)
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok((page.organisations, page.next_page_token))
            })
            .await?;
            if json {
                json::print(&orgs.iter().map(json::organisation).collect());
            } else {
                for o in &orgs {
                    println!("{}", org_line(o));
                }
            }
            pages::note_more(more);
        }
    }
    Ok(())
}

pub async fn system(args: SystemArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut admin = client(&gateway);
    let line = |s: &pb::System| format!("{}  {}  {}", s.san, s.ods_code, s.activities.join(","));
    match args.command {
        SystemCommand::Register {
            san,
            ods,
            activities,
            json,
        } => {
            let request = pb::RegisterSystemRequest {
                san,
                ods_code: ods,
                activities,
            };
            let s = admin
                .register_system(gateway.request(request)?)
                .await
                .map_err(refused)?
                .into_inner();
            if json {
                json::print(&json::system(&s));
            } else {
                println!("registered {}", line(&s));
            }
        }
        SystemCommand::List { pages, json } => {
            let (systems, more) = pages::collect(&pages, async |page_token| {
                let request = pb::ListSystemsRequest {
                    page_size: pages.page_size,
                    page_token,
                };
                let page = admin
                    .list_systems(gateway.request(request)?)
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok((page.systems, page.next_page_token))
            })
            .await?;
            if json {
                json::print(&systems.iter().map(json::system).collect());
            } else {
                for s in &systems {
                    println!("{}", line(s));
                }
            }
            pages::note_more(more);
        }
        SystemCommand::Remove { san } => {
            admin
                .remove_system(gateway.request(pb::RemoveSystemRequest { san: san.clone() })?)
                .await
                .map_err(refused)?;
            println!("removed {san}");
        }
    }
    Ok(())
}

pub async fn restrict(args: RestrictArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut admin = client(&gateway);
    match args.command {
        RestrictCommand::Set { nhs_number, reason } => {
            let r = admin
                .set_restriction(gateway.request(pb::SetRestrictionRequest { nhs_number, reason })?)
                .await
                .map_err(refused)?
                .into_inner();
            println!(
                "restricted {}; {} local authority notification{} sent",
                r.nhs_number,
                r.notifications_created,
                if r.notifications_created == 1 {
                    ""
                } else {
                    "s"
                }
            );
        }
        RestrictCommand::Clear { nhs_number } => {
            admin
                .clear_restriction(gateway.request(pb::ClearRestrictionRequest {
                    nhs_number: nhs_number.clone(),
                })?)
                .await
                .map_err(refused)?;
            println!("the restriction on {nhs_number} is lifted");
        }
    }
    Ok(())
}

pub async fn nhs_number(args: NhsNumberArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut admin = client(&gateway);
    match args.command {
        NhsNumberCommand::Inactive {
            nhs_number,
            superseded_by,
        } => {
            let r = admin
                .mark_nhs_number_inactive(gateway.request(pb::MarkNhsNumberInactiveRequest {
                    nhs_number: nhs_number.clone(),
                    superseded_by: superseded_by.unwrap_or_default(),
                })?)
                .await
                .map_err(refused)?
                .into_inner();
            println!(
                "{nhs_number} is marked inactive; {} local authority notification{} sent",
                r.notifications_created,
                if r.notifications_created == 1 {
                    ""
                } else {
                    "s"
                }
            );
        }
    }
    Ok(())
}

fn failed_obligation_line(o: &pb::FailedObligation) -> String {
    format!(
        "{}  {}  {:<8} {} tries, {} failed since {}  {}",
        o.lookup_id,
        crate::lookup::local_time(o.accessed_at.as_ref()),
        o.ods_code,
        o.attempts,
        o.failures,
        crate::lookup::local_time(o.failing_since.as_ref()),
        o.last_error
    )
}

fn failed_obligation_json(o: &pb::FailedObligation) -> serde_json::Value {
    serde_json::json!({
        "lookup_id": o.lookup_id,
        "accessed_at": json::timestamp(o.accessed_at.as_ref()),
        "ods_code": o.ods_code,
        "organisation_name": o.organisation_name,
        "attempts": o.attempts,
        "failures": o.failures,
        "last_error": o.last_error,
        "failing_since": json::timestamp(o.failing_since.as_ref()),
        "failed_at": json::timestamp(o.failed_at.as_ref()),
    })
}

pub async fn admin(args: AdminArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let mut admin = client(&gateway);
    match args.command {
        AdminCommand::Obligations(ObligationsCommand::List { pages, json }) => {
            let (failed, more) = pages::collect(&pages, async |page_token| {
                let request = pb::ListFailedObligationsRequest {
                    page_size: pages.page_size,
                    page_token,
                };
                let page = admin
                    .list_failed_obligations(gateway.request(request)?)
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok((page.obligations, page.next_page_token))
            })
            .await?;
            if json {
                json::print(&failed.iter().map(failed_obligation_json).collect());
            } else if failed.is_empty() {
                eprintln!("no failed obligations");
            } else {
                for o in &failed {
                    println!("{}", failed_obligation_line(o));
                }
            }
            pages::note_more(more);
        }
        AdminCommand::Obligations(ObligationsCommand::Retry { lookup_id }) => {
            admin
                .retry_obligation(gateway.request(pb::RetryObligationRequest {
                    lookup_id: lookup_id.clone(),
                })?)
                .await
                .map_err(refused)?;
            println!("obligation {lookup_id} returned to the reconciler");
        }
    }
    Ok(())
}
