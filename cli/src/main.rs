//! The `cpis` binary.

use clap::{Parser, Subcommand};
use cpis_cli::{dev, token};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cpis",
    version,
    about = "Child protection information sharing: run it, and call it"
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Token(args) => token::mint(&args).map(|t| println!("{t}")),
        Command::Dev(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(dev::run(args))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpis: {e:#}");
            ExitCode::FAILURE
        }
    }
}
