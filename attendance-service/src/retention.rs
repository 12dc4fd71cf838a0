//! Retention: attendances older than the configured period are deleted in the background,
//! a bounded batch per statement, so writers never queue behind one long delete.

use crate::config::RetentionArgs;
use crate::error::AttendanceError;
use crate::storage::Attendances;
use chrono::{DateTime, Utc};
use platform::health::Readiness;
use platform::shutdown::Shutdown;
use std::time::Duration;

/// Deletes every attendance with `attended_at < now - retention`, batch by batch; stops early
/// (having deleted whole batches only) when shutdown fires. Returns how many went.
pub async fn purge_expired(
    attendances: &Attendances,
    now: DateTime<Utc>,
    policy: &RetentionArgs,
    shutdown: &Shutdown,
) -> Result<u64, AttendanceError> {
    let cutoff = now - policy.retention();
    let mut total = 0;
    while !shutdown.is_fired() {
        let deleted = attendances
            .purge_batch(cutoff, policy.purge_batch_size)
            .await?;
        total += deleted;
        if deleted < policy.purge_batch_size {
            break;
        }
        // Let writers and readers in between batches.
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// The background task: a purge once the service is ready, then one per interval, until
/// shutdown. A failed purge is logged and retried at the next interval.
pub async fn run(
    attendances: Attendances,
    policy: RetentionArgs,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    // Until migrations ran there is no table to purge.
    while !readiness.is_ready() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait() => return,
        }
    }
    loop {
        match purge_expired(&attendances, Utc::now(), &policy, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged expired attendances"),
            Err(e) => tracing::warn!(error = %e, "purging expired attendances failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.purge_interval()) => {}
            _ = shutdown.wait() => return,
        }
    }
}
