//! The optional shared cache: Redis, reached through a connection manager that reconnects by
//! itself. Callers treat every Redis error as "no cache" for reads (go to the database) and
//! as `UNAVAILABLE` for the bumps that acknowledge writes (ARCHITECTURE.md rule 2).

use crate::error::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Connects lazily-tolerant: a Redis that is down at start is retried in the background.
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client =
        redis::Client::open(url).map_err(|e| Error::internal(format!("redis URL: {e}")))?;
    // Short timeouts: a cache that does not answer quickly is treated as absent (reads go to
    // the database) rather than spending the caller's whole deadline waiting for it.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(Error::from)
}
