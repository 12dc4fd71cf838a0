//! The `cpis` binary: parses the command line and runs one subcommand.

use clap::{Parser, Subcommand};
use cpis_cli::failure::{self, CliResult, Failure};
use cpis_cli::{admin, audit, demo, dev, flags, lookup, notifications, token, upload};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cpis",
    version,
    about = "Child protection information sharing: run it, and call it",
    after_help = failure::EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the four services in one process on SQLite (gateway on 127.0.0.1:50051).
    Dev(dev::DevArgs),
    /// Print a development user token signed by the key `cpis dev` created.
    Token(token::TokenArgs),
    /// Look a child up, as a clinician (B0107; with --silent, B0170).
    Lookup(lookup::LookupArgs),
    /// Upload a local authority's flag file (CSV), checked before anything is sent.
    Upload(upload::UploadArgs),
    /// A local authority's flags: list, end, delete.
    Flags(flags::FlagsArgs),
    /// A local authority's notifications: list, watch, ack.
    Notifications(notifications::NotificationsArgs),
    /// The audit log: list, verify, checkpoint.
    Audit(audit::AuditArgs),
    /// Organisations taking part: upsert, list.
    Org(admin::OrgArgs),
    /// Council systems identified by client certificate: register, list, remove.
    System(admin::SystemArgs),
    /// Restricted (sensitive) NHS numbers: set, clear.
    Restrict(admin::RestrictArgs),
    /// NHS numbers no longer in use: inactive.
    NhsNumber(admin::NhsNumberArgs),
    /// Operating cpis: obligations list, retry.
    Admin(admin::AdminArgs),
    /// Write a synthetic national dataset as CSV (999 test-range NHS numbers only), and
    /// optionally load it into a running gateway.
    DemoData(demo::DemoDataArgs),
}

async fn run(command: Command) -> CliResult {
    match command {
        Command::Dev(args) => Ok(dev::run(args).await?),
        Command::Token(args) => {
            println!("{}", token::mint(&args)?);
            Ok(())
        }
        Command::Lookup(args) => lookup::run(args).await,
        Command::Upload(args) => upload::run(args).await,
        Command::Flags(args) => flags::run(args).await,
        Command::Notifications(args) => notifications::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Org(args) => admin::org(args).await,
        Command::System(args) => admin::system(args).await,
        Command::Restrict(args) => admin::restrict(args).await,
        Command::NhsNumber(args) => admin::nhs_number(args).await,
        Command::Admin(args) => admin::admin(args).await,
        Command::DemoData(args) => demo::run(args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))
        .and_then(|rt| rt.block_on(run(cli.command)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.render());
            ExitCode::from(failure.exit_code())
        }
    }
}
