//! The optional shared cache: Redis, reached through a connection manager that reconnects by
//! itself. Callers treat every Redis error as "no cache" for reads (go to the database) and
//! as `UNAVAILABLE` for the bumps that acknowledge writes (ARCHITECTURE.md rule 2).

use crate::datastore::DatastoreTls;
use crate::error::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// The client for `url`, checked at start: refused if TLS is required and the URL is not
/// `rediss://`; with a CA file, a `rediss://` server's certificate must chain to it (instead
/// of the system store). Connects to nothing yet.
pub fn client(url: &str, tls: &DatastoreTls) -> Result<redis::Client> {
    tls.check_redis_url(url)?;
    // redis builds its rustls config on the process default provider: make it aws-lc-rs.
    crate::tls::install_default_provider();
    let bad = |e: redis::RedisError| {
        Error::FailedPrecondition(format!(
            "redis URL {}: {e}",
            crate::database::redact_url(url)
        ))
    };
    match tls.ca_pem() {
        Some(ca) if url.starts_with("rediss:") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        )
        .map_err(bad),
        _ => redis::Client::open(url).map_err(bad),
    }
}

/// Connects lazily-tolerant: a Redis that is down at start is retried in the background.
/// The error keeps Redis' reason (a certificate refused, say) for the log line.
pub async fn connect(client: redis::Client) -> Result<ConnectionManager> {
    // Short timeouts: a cache that does not answer quickly is treated as absent (reads go to
    // the database) rather than spending the caller's whole deadline waiting for it.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| Error::internal(format!("cannot connect to Redis: {e}")))
}
