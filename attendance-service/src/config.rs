//! attendance-service's command line: the flags every backend shares, plus retention.

use clap::Args;
use platform::config::ServeArgs;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct AttendanceArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,
}

const DEFAULT_RETENTION_DAYS: u32 = 400;
const DEFAULT_PURGE_INTERVAL_SECONDS: u64 = 3600;
const DEFAULT_PURGE_BATCH_SIZE: u64 = 5000;

/// How long attendances are kept and how the purge paces itself.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionArgs {
    /// Days an attendance is kept (by its `attended_at`). At least 366: the 365-day count
    /// must never lose rows it should count.
    #[arg(
        long,
        env = "CPIS_ATTENDANCE_RETENTION_DAYS",
        default_value_t = DEFAULT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(366..)
    )]
    pub retention_days: u32,

    /// Seconds between purges of expired attendances.
    #[arg(
        long,
        env = "CPIS_ATTENDANCE_PURGE_INTERVAL_SECONDS",
        default_value_t = DEFAULT_PURGE_INTERVAL_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub purge_interval_seconds: u64,

    /// Attendances deleted per statement: small enough that each delete is a short
    /// transaction writers barely wait for.
    #[arg(
        long,
        env = "CPIS_ATTENDANCE_PURGE_BATCH_SIZE",
        default_value_t = DEFAULT_PURGE_BATCH_SIZE,
        value_parser = clap::value_parser!(u64).range(1..=100_000)
    )]
    pub purge_batch_size: u64,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        RetentionArgs {
            retention_days: DEFAULT_RETENTION_DAYS,
            purge_interval_seconds: DEFAULT_PURGE_INTERVAL_SECONDS,
            purge_batch_size: DEFAULT_PURGE_BATCH_SIZE,
        }
    }
}

impl RetentionArgs {
    pub fn retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.retention_days))
    }

    pub fn purge_interval(&self) -> Duration {
        Duration::from_secs(self.purge_interval_seconds)
    }
}

impl AttendanceArgs {
    /// For a service started inside another process (`cpis dev`, tests): no environment is
    /// read, state lives under `data_dir`, retention at its defaults.
    pub fn embedded(data_dir: PathBuf) -> Self {
        AttendanceArgs {
            serve: ServeArgs::embedded(data_dir),
            retention: RetentionArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AttendanceArgs,
    }

    #[test]
    fn retention_defaults_to_400_days_and_refuses_less_than_366() {
        let cli = Cli::try_parse_from(["attendance-service"]).unwrap();
        assert_eq!(cli.args.retention, RetentionArgs::default());
        assert!(Cli::try_parse_from(["attendance-service", "--retention-days", "365"]).is_err());
        let cli = Cli::try_parse_from(["attendance-service", "--retention-days", "730"]).unwrap();
        assert_eq!(cli.args.retention.retention_days, 730);
    }
}
