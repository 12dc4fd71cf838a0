//! Transport security from the configured PEM files (rustls with aws-lc-rs, the one crypto
//! provider of the workspace).

use crate::config::TlsArgs;
use crate::error::{Error, Result};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::FailedPrecondition(format!("cannot read {what} {}: {e}", path.display()))
    })
}

/// The server side: `None` (plain TCP) unless a certificate and key are configured. With a
/// client CA, clients may present certificates from it (council systems); users need none.
pub fn server_config(args: &TlsArgs) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &args.tls_client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read(ca, "client CA")?))
            .client_auth_optional(true);
    }
    Ok(Some(config))
}
