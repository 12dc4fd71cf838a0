//! `cpis demo-data`: a synthetic national dataset, the same for the same seed and day: local
//! authorities with fictional contacts, NHS trusts with their sites, flags in the upload
//! format, and attendances. Every NHS number is in the 999 range, which is never issued;
//! every phone number is in Ofcom's ranges reserved for drama (01632 960xxx, 020 7946 0xxx).
//!
//! Codes are positional so that documentation can name them: the first local authority is
//! always `101`, the first trust `RAA` and its first site `RAA01` (an emergency department).
//! Names, flags and attendances depend on the seed.

mod dataset;
mod load;

pub use dataset::{
    DEV_SIZES, Dataset, DemoAttendance, LocalAuthority, NATIONAL_LAS, Site, Sizes, Trust, generate,
    la_code, trust_code,
};
pub use load::{DEMO_ADMIN_ORG, LoadReport, load};

use crate::connect::GatewayArgs;
use crate::failure::CliResult;
use chrono::NaiveDate;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DemoDataArgs {
    /// Where to write the CSV files.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = NATIONAL_LAS)]
    pub las: usize,
    #[arg(long, default_value_t = 140)]
    pub trusts: usize,
    #[arg(long, default_value_t = 5_000)]
    pub flags: usize,
    #[arg(long, default_value_t = 2_000)]
    pub attendances: usize,
    /// The day dates are relative to (default: today in England).
    #[arg(long, value_parser = parse_day)]
    pub today: Option<NaiveDate>,
    /// Also load it through the gateway's public API (tokens signed with the key in
    /// --data-dir).
    #[arg(long)]
    pub load: bool,
    /// The directory of `cpis dev`'s development key (for --load).
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "./cpis-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

fn parse_day(input: &str) -> Result<NaiveDate, String> {
    platform::domain::parse_date(input).map_err(|e| e.to_string())
}
pub async fn run(args: DemoDataArgs) -> CliResult {
    let today = args
        .today
        .unwrap_or_else(|| platform::domain::england_date(chrono::Utc::now()));
    let sizes = Sizes {
        las: args.las,
        trusts: args.trusts,
        flags: args.flags,
        attendances: args.attendances,
    };
    let dataset = generate(args.seed, sizes, today);
    dataset.write(&args.out)?;
    println!(
        "wrote {} local authorities, {} trusts ({} sites), {} flags, {} attendances to {}",
        dataset.local_authorities.len(),
        dataset.trusts.len(),
        dataset.trusts.iter().map(|t| t.sites.len()).sum::<usize>(),
        dataset
            .local_authorities
            .iter()
            .map(|l| l.flags.len())
            .sum::<usize>(),
        dataset.attendances.len(),
        args.out.display()
    );
    if args.load {
        let report = load(&dataset, &args.gateway, &args.data_dir).await?;
        println!(
            "loaded into {}: {} organisations, {} flags accepted ({} rejected), {} lookups",
            args.gateway.gateway,
            report.organisations,
            report.accepted,
            report.rejected,
            report.lookups
        );
    }
    Ok(())
}
