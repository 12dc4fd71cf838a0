//! TLS to the datastores, one way for PostgreSQL and Redis: the CA bundle their server
//! certificates are verified against (`CPIS_DATASTORE_CA_FILE`), and the rule
//! (`CPIS_REQUIRE_DATASTORE_TLS`, on in production) that a URL which could connect without
//! verified TLS stops the service at start instead of sending NHS numbers in the clear.
//!
//! What counts as verified: for PostgreSQL the effective `sslmode` (the URL's, else
//! `PGSSLMODE`, else sqlx's `prefer`, which silently falls back to plaintext) must be
//! `verify-full`. `verify-ca` is refused too: it checks the chain but not the name, and sqlx
//! trusts the public webpki roots besides the CA file, so any publicly issued certificate
//! would pass. For Redis the URL must be `rediss://` without `#insecure`. SQLite is a local
//! file, never acceptable where datastores are meant to be remote and encrypted.
//!
//! Both clients run on rustls with aws-lc-rs, the workspace's one crypto provider.

use crate::config::DatastoreTlsArgs;
use crate::database::redact_url;
use crate::error::{Error, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// The datastore TLS settings, resolved at start: the CA bundle read and checked once.
/// `Default` is "no CA file, TLS not required": tests and tools.
#[derive(Clone, Debug, Default)]
pub struct DatastoreTls {
    ca_pem: Option<Arc<[u8]>>,
    required: bool,
}

impl DatastoreTls {
    /// Reads the CA file (it must hold at least one PEM certificate).
    pub fn from_args(args: &DatastoreTlsArgs) -> Result<DatastoreTls> {
        let ca_pem = match &args.datastore_ca_file {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        Ok(DatastoreTls {
            ca_pem,
            required: args.require_datastore_tls,
        })
    }

    /// The CA bundle's PEM text, when one is configured.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// With TLS required, refuses a database URL that could connect without verified TLS.
    pub fn check_database_url(&self, url: &str) -> Result<()> {
        if !self.required {
            return Ok(());
        }
        if url.starts_with("sqlite:") {
            return Err(refuse(
                "database",
                url,
                "SQLite is a local file; set CPIS_DATABASE_URL to a PostgreSQL URL with sslmode=verify-full",
            ));
        }
        // The options sqlx itself would use, PGSSLMODE included.
        let mode = PgConnectOptions::from_str(url)
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "database URL {} does not parse: {e}",
                    redact_url(url)
                ))
            })?
            .get_ssl_mode();
        if matches!(mode, PgSslMode::VerifyFull) {
            return Ok(());
        }
        Err(refuse(
            "database",
            url,
            &format!(
                "its sslmode is {} (absent means prefer, which falls back to plaintext); add sslmode=verify-full to the URL",
                ssl_mode_name(mode)
            ),
        ))
    }

    /// With TLS required, refuses a Redis URL that is not `rediss://` with verification.
    pub fn check_redis_url(&self, url: &str) -> Result<()> {
        if !self.required {
            return Ok(());
        }
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let info = url.into_connection_info().map_err(|e| {
            Error::FailedPrecondition(format!("redis URL {} does not parse: {e}", redact_url(url)))
        })?;
        match info.addr() {
            ConnectionAddr::TcpTls {
                insecure: false, ..
            } => Ok(()),
            ConnectionAddr::TcpTls { insecure: true, .. } => Err(refuse(
                "Redis",
                url,
                "#insecure turns certificate verification off; remove it",
            )),
            _ => Err(refuse(
                "Redis",
                url,
                "it is not TLS; use a rediss:// URL (CPIS_REDIS_URL)",
            )),
        }
    }
}

fn refuse(what: &str, url: &str, fix: &str) -> Error {
    Error::FailedPrecondition(format!(
        "CPIS_REQUIRE_DATASTORE_TLS is on and the {what} URL {} could connect without verified TLS: {fix}",
        redact_url(url)
    ))
}

fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// The file's bytes, once it is known to hold PEM certificates only: a wrong path or a key
/// by mistake stops the start here, not at the first connection.
fn read_ca(path: &Path) -> Result<Arc<[u8]>> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::FailedPrecondition(format!("CPIS_DATASTORE_CA_FILE {}: {e}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(pem.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn required() -> DatastoreTls {
        DatastoreTls {
            ca_pem: None,
            required: true,
        }
    }

    #[test]
    fn require_datastore_tls_refuses_plaintext_urls_at_start() {
        let tls = required();
        for url in [
            "postgres://cpis:s3cret@db:5432/flags",
            "postgres://cpis:s3cret@db:5432/flags?sslmode=prefer",
            "postgres://cpis:s3cret@db:5432/flags?sslmode=disable",
            "postgres://cpis:s3cret@db:5432/flags?sslmode=require",
            "postgres://cpis:s3cret@db:5432/flags?sslmode=verify-ca",
            "sqlite://./x.db?mode=rwc",
        ] {
            let e = tls.check_database_url(url).unwrap_err().to_string();
            assert!(e.contains("CPIS_REQUIRE_DATASTORE_TLS"), "{url}: {e}");
            assert!(!e.contains("s3cret"), "the password is not shown: {e}");
            assert!(
                e.contains("verify-full"),
                "{url}: the message says what to set: {e}"
            );
        }
        for url in [
            "redis://:s3cret@cache:6379/0",
            "rediss://:s3cret@cache:6379/0#insecure",
            "redis+unix:///run/redis.sock",
        ] {
            let e = tls.check_redis_url(url).unwrap_err().to_string();
            assert!(e.contains("CPIS_REQUIRE_DATASTORE_TLS"), "{url}: {e}");
            assert!(!e.contains("s3cret"), "the password is not shown: {e}");
        }
        assert!(
            tls.check_redis_url("redis://cache:6379")
                .unwrap_err()
                .to_string()
                .contains("rediss://")
        );

        tls.check_database_url("postgres://cpis:pw@db:5432/flags?sslmode=verify-full")
            .unwrap();
        tls.check_database_url("postgres://cpis@db/flags?sslrootcert=/ca.pem&sslmode=verify-full")
            .unwrap();
        tls.check_redis_url("rediss://:pw@cache:6379/0").unwrap();

        // Not required: nothing changes.
        let off = DatastoreTls::default();
        off.check_database_url("postgres://cpis@db/flags").unwrap();
        off.check_database_url("sqlite://./x.db?mode=rwc").unwrap();
        off.check_redis_url("redis://cache:6379").unwrap();
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let args = DatastoreTlsArgs {
            datastore_ca_file: Some(path.clone()),
            require_datastore_tls: false,
        };
        let e = DatastoreTls::from_args(&args).unwrap_err().to_string();
        assert!(e.contains("CPIS_DATASTORE_CA_FILE"), "{e}");
        let missing = DatastoreTlsArgs {
            datastore_ca_file: Some(dir.path().join("absent.pem")),
            require_datastore_tls: false,
        };
        assert!(DatastoreTls::from_args(&missing).is_err());
    }
}
