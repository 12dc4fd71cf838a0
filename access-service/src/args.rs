//! access-service's command line: what every backend takes, plus the audit signing key and
//! when an obligation whose work keeps failing is given up on.

use crate::storage::obligations::RetryPolicy;
use clap::Args;
use platform::config::ServeArgs;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct AccessArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Ed25519 private key (PKCS#8 PEM) that signs audit checkpoints. Every replica needs the
    /// same key. Without it, a development key is created under the data directory.
    #[arg(long, env = "CPIS_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,

    /// Seconds an obligation's work may keep failing (for a reason other than a backend being
    /// unavailable) before it moves to the failed state, where the reconciler stops retrying
    /// it and an operator retries it (`cpis admin obligations`).
    #[arg(
        long,
        env = "CPIS_OBLIGATION_FAIL_AFTER_SECONDS",
        default_value_t = DEFAULT_OBLIGATION_FAIL_AFTER_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub obligation_fail_after_seconds: u64,

    /// The least authentication assurance level (CIS2's `authentication_assurance_level`) a
    /// lookup needs; below it a lookup is denied `INSUFFICIENT_ASSURANCE`, audited. 3 is the
    /// level CIS2 gives smartcard-class sign-in.
    #[arg(
        long,
        env = "CPIS_MIN_AAL",
        default_value_t = crate::decide::DEFAULT_MIN_ASSURANCE_LEVEL,
        value_parser = clap::value_parser!(u8).range(0..=4)
    )]
    pub min_aal: u8,
}

pub const DEFAULT_OBLIGATION_FAIL_AFTER_SECONDS: u64 = RetryPolicy::DEFAULT_FAIL_AFTER.as_secs();

impl AccessArgs {
    /// How the obligations outbox spaces retries and when it gives up.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::failing_after(Duration::from_secs(self.obligation_fail_after_seconds))
    }

    /// For a service started inside another process (`cpis dev`, tests): no environment is
    /// read; state, including the development signing key, lives under `data_dir`.
    pub fn embedded(data_dir: PathBuf) -> Self {
        AccessArgs {
            serve: ServeArgs::embedded(data_dir),
            audit_signing_key_file: None,
            obligation_fail_after_seconds: DEFAULT_OBLIGATION_FAIL_AFTER_SECONDS,
            min_aal: crate::decide::DEFAULT_MIN_ASSURANCE_LEVEL,
        }
    }
}
