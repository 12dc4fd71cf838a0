//! access-service's command line: what every backend takes, plus the audit signing key.

use clap::Args;
use platform::config::ServeArgs;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct AccessArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Ed25519 private key (PKCS#8 PEM) that signs audit checkpoints. Every replica needs the
    /// same key. Without it, a development key is created under the data directory.
    #[arg(long, env = "CPIS_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,
}

impl AccessArgs {
    /// For a service started inside another process (`cpis dev`, tests): no environment is
    /// read; state, including the development signing key, lives under `data_dir`.
    pub fn embedded(data_dir: PathBuf) -> Self {
        AccessArgs {
            serve: ServeArgs::embedded(data_dir),
            audit_signing_key_file: None,
        }
    }
}
